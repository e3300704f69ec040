from ebscrypt.cli import main

raise SystemExit(main())
