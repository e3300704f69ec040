"""The XML of Describe at scale, this tree against another (issue 15: byte-identical is the
goal): the same rows (bench_describe_scale.fill, 3,000 of each kind, a description and a
tag needing escapes) served by both; pages, the kms-key-id / name=prefix* and tag:Name
filters, ids; every body compared with its requestId removed.

    python bench/describe_same_xml.py /tmp/before-tree
"""
import re, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_describe_scale import fill, ACCOUNT, KEY_B
from bench.common import RawCall, sign_requests, start_ebscrypt
import http.client

work = Path(tempfile.mkdtemp(prefix="describe-same-xml-"))
failed = False
try:
    for kind in ("snapshots", "volumes", "images"):
        for side, tree in (("this", None), ("base", Path(sys.argv[1]))):
            start_ebscrypt(work / kind / side, tree=tree).stop()
            fill(work / kind / side, kind, 0, 3000)
    # a few awkward values: escaping, tags
    import sqlite3
    for side in ("this", "base"):
        c = sqlite3.connect(work / "snapshots" / side / "metadata.db")
        c.execute("update ec2_snapshots set description='a <b> & c\r\nd' where rowid=5")
        c.execute("insert into ec2_tags values('snap-00000000000000007','k&<>','v\r>','snapshot','111111111111','us-east-1')")
        c.commit(); c.close()
        # volumes: an attachment (the rows path writes its list), a tag needing escapes, a
        # volume from a snapshot with no key, and a time whose stored form is not the plain one
        c = sqlite3.connect(work / "volumes" / side / "metadata.db")
        c.execute("insert into ec2_volume_attachments values('vol-00000000000000003','i-0123','/dev/sdf','attached','2026-01-01 00:00:03.004000',1)")
        c.execute("insert into ec2_tags values('vol-00000000000000004','k&<>','v\r>','volume','111111111111','us-east-1')")
        c.execute("update ec2_volumes set snapshot_id='snap-1', encrypted=0, kms_key_arn=null, iops=null where rowid=6")
        c.execute("update ec2_volumes set create_time='2026-01-01 00:00:07' where rowid=8")
        c.commit(); c.close()
        # images: the members most rows leave out, escapes, other mappings, a tag
        c = sqlite3.connect(work / "images" / side / "metadata.db")
        c.execute("update ec2_images set platform='windows', state_reason_code='Client.Error', "
                  "state_reason_message='a <b> & c', description=null, ena_support=null where rowid=3")
        c.execute("update ec2_images set source_image_id='ami-1', source_region=null, source_instance_id='i-1', "
                  "sriov_net_support='simple', boot_mode='uefi', tpm_support='v2.0', imds_support='v2.0', "
                  "kernel_id='aki-1', ramdisk_id='ari-1', image_location='loc&', root_device_name=null, "
                  "public=1, mappings='[{\"DeviceName\": \"/dev/sdb\", \"NoDevice\": \"\"}, "
                  "{\"DeviceName\": \"/dev/sdc\", \"VirtualName\": \"ephemeral0\"}]' where rowid=4")
        c.execute("update ec2_images set created_at='2026-01-01 00:00:05' where rowid=6")
        c.execute("insert into ec2_tags values('ami-00000000000000007','k&<>','v\r>','image','111111111111','us-east-1')")
        c.commit(); c.close()
    calls = {
        "snapshots": [("describe_snapshots", {"OwnerIds": ["self"], "MaxResults": 1000}),
                      ("describe_snapshots", {"OwnerIds": ["self"], "Filters": [{"Name": "kms-key-id", "Values": [KEY_B]}]}),
                      ("describe_snapshots", {"OwnerIds": ["self"], "Filters": [{"Name": "tag:Name", "Values": ["one-percent"]}]}),
                      ("describe_snapshots", {"SnapshotIds": ["snap-00000000000000005", "snap-00000000000000007"]})],
        "volumes": [("describe_volumes", {"MaxResults": 500}),
                    ("describe_volumes", {"Filters": [{"Name": "kms-key-id", "Values": [KEY_B]}]}),
                    ("describe_volumes", {"Filters": [{"Name": "tag:Name", "Values": ["one-percent"]}]}),
                    # the listing without MaxResults (one answer), a filter paged, escapes, attachments
                    ("describe_volumes", {}),
                    ("describe_volumes", {"MaxResults": 400, "Filters": [{"Name": "encrypted", "Values": ["true"]}]}),
                    ("describe_volumes", {"Filters": [{"Name": "tag:k&<>", "Values": ["v*"]}]}),
                    ("describe_volumes", {"Filters": [{"Name": "attachment.status", "Values": ["attached"]}]})],
        "images": [("describe_images", {"Owners": ["self"], "MaxResults": 1000}),
                   ("describe_images", {"Owners": ["self"], "Filters": [{"Name": "name", "Values": ["one-percent-*"]}]}),
                   ("describe_images", {"Owners": ["self"], "Filters": [{"Name": "tag:Name", "Values": ["one-percent"]}]}),
                   # filtered and paged, without Owners, on the rows the odd members live in
                   ("describe_images", {"Owners": ["self"], "MaxResults": 7,
                                        "Filters": [{"Name": "name", "Values": ["one-percent-*"]}]}),
                   ("describe_images", {"Filters": [{"Name": "image-id", "Values": ["ami-0000000000000000*"]}]}),
                   ("describe_images", {"Owners": ["self"], "Filters": [{"Name": "tag:k&<>", "Values": ["v*"]}]}),
                   ("describe_images", {"Filters": [{"Name": "is-public", "Values": ["true"]}]})],
    }
    for kind, cs in calls.items():
        bodies = {}
        for side, tree in (("this", None), ("base", Path(sys.argv[1]))):
            srv = start_ebscrypt(work / kind / side, tree=tree)
            try:
                out = []
                for method, params in cs:
                    token = None
                    while True:
                        p = dict(params, **({"NextToken": token} if token else {}))
                        m, path, body, headers = sign_requests(srv.url, RawCall("ec2", method, p, ACCOUNT), 1)[0]
                        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
                        conn.request(m, path, body=body, headers=headers); r = conn.getresponse(); text = r.read(); conn.close()
                        assert r.status == 200, text[:300]
                        out.append(re.sub(rb"<requestId>[^<]*</requestId>", b"", text))
                        token = text.split(b"<nextToken>")[1].split(b"</nextToken>")[0].decode() if b"<nextToken>" in text else None
                        if not token: break
                bodies[side] = out
            finally:
                srv.stop()
        same = bodies["this"] == bodies["base"]
        failed = failed or not same
        print(kind, "responses", len(bodies["this"]), "bytes", sum(map(len, bodies["this"])), "identical" if same else "DIFFERENT")
        if not same:
            for a, b in zip(bodies["this"], bodies["base"]):
                if a != b:
                    i = next(i for i in range(min(len(a), len(b))) if a[i] != b[i]); print(a[i-200:i+200]); print(b[i-200:i+200]); break
finally:
    shutil.rmtree(work, ignore_errors=True)
sys.exit(1 if failed else 0)
