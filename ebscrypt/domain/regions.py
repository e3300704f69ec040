"""The AWS commercial regions and their Availability Zones, as a new account sees them.

This table, not the installed botocore, is the source of truth for which regions ebscrypt
serves: it carries what botocore's partition data does not (zones, zone ids, opt-in
status), and the regions a server answers for must not change when a newer botocore is
installed. A region botocore knows and this table does not is reported by
``tests/unit/test_ec2_regions_unit.py`` (a warning), and added here by hand.

A pure table: no I/O. Other layers ask :func:`is_known_region`, :func:`availability_zones`,
:func:`zone` and :func:`region_info`.

Facts encoded here (AWS "Regions and Zones" documentation):

- Regions launched before 20 March 2019 are enabled for every account
  (``opt-in-not-required``); later ones must be enabled by the account first and read
  ``not-opted-in`` until then (``opted-in`` after). ebscrypt has no EnableRegion yet, so
  every account is a new account.
- The regional EC2 endpoint is ``ec2.<region>.amazonaws.com``.
- AZ names are the region name plus a letter; AZ ids are ``<short region><n>-az<k>``
  (``use1-az1``). AWS maps names to ids per account; ebscrypt uses one fixed mapping.
  A few regions skip letters or ids (us-west-1 has two zones; ap-northeast-1 and
  ca-central-1 have no ``b``/``c`` zone respectively for new accounts).
- For an Availability Zone (not a Local/Wavelength Zone): ZoneType ``availability-zone``,
  OptInStatus always ``opt-in-not-required``, NetworkBorderGroup = the region name,
  GroupName ``<region>-zg-1`` and GroupLongName ``<region long name> 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

OPT_IN_NOT_REQUIRED = "opt-in-not-required"
OPTED_IN = "opted-in"
NOT_OPTED_IN = "not-opted-in"


@dataclass(frozen=True)
class Region:
    name: str
    long_name: str
    opt_in_required: bool
    # (zone letter, zone id number), in zone-name order
    zones: tuple[tuple[str, int], ...]

    @property
    def endpoint(self) -> str:
        return f"ec2.{self.name}.amazonaws.com"

    @property
    def short_name(self) -> str:
        """``us-east-1`` → ``use1``; ``ap-southeast-2`` → ``apse2``; ``il-central-1`` → ``ilc1``."""
        area, direction, number = self.name.split("-")
        abbrev = {
            "east": "e", "west": "w", "north": "n", "south": "s", "central": "c",
            "northeast": "ne", "southeast": "se", "northwest": "nw", "southwest": "sw",
        }[direction]
        return f"{area}{abbrev}{number}"


@dataclass(frozen=True)
class Zone:
    name: str
    zone_id: str
    region: str
    region_long_name: str

    @property
    def group_name(self) -> str:
        return f"{self.region}-zg-1"

    @property
    def group_long_name(self) -> str:
        return f"{self.region_long_name} 1"


_ABC = (("a", 1), ("b", 2), ("c", 3))

_REGIONS: tuple[Region, ...] = (
    # Enabled by default (launched before 2019-03-20).
    Region("us-east-1", "US East (N. Virginia)", False,
           (("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("f", 6))),
    Region("us-east-2", "US East (Ohio)", False, _ABC),
    Region("us-west-1", "US West (N. California)", False, (("a", 1), ("b", 3))),
    Region("us-west-2", "US West (Oregon)", False, (("a", 1), ("b", 2), ("c", 3), ("d", 4))),
    Region("ap-south-1", "Asia Pacific (Mumbai)", False, _ABC),
    Region("ap-northeast-1", "Asia Pacific (Tokyo)", False, (("a", 4), ("c", 1), ("d", 2))),
    Region("ap-northeast-2", "Asia Pacific (Seoul)", False,
           (("a", 1), ("b", 2), ("c", 3), ("d", 4))),
    Region("ap-northeast-3", "Asia Pacific (Osaka)", False, _ABC),
    Region("ap-southeast-1", "Asia Pacific (Singapore)", False, _ABC),
    Region("ap-southeast-2", "Asia Pacific (Sydney)", False, _ABC),
    Region("ca-central-1", "Canada (Central)", False, (("a", 1), ("b", 2), ("d", 4))),
    Region("eu-central-1", "Europe (Frankfurt)", False, _ABC),
    Region("eu-west-1", "Europe (Ireland)", False, _ABC),
    Region("eu-west-2", "Europe (London)", False, _ABC),
    Region("eu-west-3", "Europe (Paris)", False, _ABC),
    Region("eu-north-1", "Europe (Stockholm)", False, _ABC),
    Region("sa-east-1", "South America (Sao Paulo)", False, _ABC),
    # Opt-in regions (launched on or after 2019-03-20).
    Region("af-south-1", "Africa (Cape Town)", True, _ABC),
    Region("ap-east-1", "Asia Pacific (Hong Kong)", True, _ABC),
    Region("ap-east-2", "Asia Pacific (Taipei)", True, _ABC),
    Region("ap-south-2", "Asia Pacific (Hyderabad)", True, _ABC),
    Region("ap-southeast-3", "Asia Pacific (Jakarta)", True, _ABC),
    Region("ap-southeast-4", "Asia Pacific (Melbourne)", True, _ABC),
    Region("ap-southeast-5", "Asia Pacific (Malaysia)", True, _ABC),
    Region("ap-southeast-6", "Asia Pacific (New Zealand)", True, _ABC),
    Region("ap-southeast-7", "Asia Pacific (Thailand)", True, _ABC),
    Region("ca-west-1", "Canada West (Calgary)", True, _ABC),
    Region("eu-central-2", "Europe (Zurich)", True, _ABC),
    Region("eu-south-1", "Europe (Milan)", True, _ABC),
    Region("eu-south-2", "Europe (Spain)", True, _ABC),
    Region("il-central-1", "Israel (Tel Aviv)", True, _ABC),
    Region("me-central-1", "Middle East (UAE)", True, _ABC),
    Region("me-south-1", "Middle East (Bahrain)", True, _ABC),
    Region("me-west-1", "Middle East (Saudi Arabia)", True, _ABC),
    Region("mx-central-1", "Mexico (Central)", True, _ABC),
    Region("sa-west-1", "South America (Chile)", True, _ABC),
)

_BY_NAME: dict[str, Region] = {r.name: r for r in _REGIONS}


def _zones_of(region: Region) -> tuple[Zone, ...]:
    return tuple(
        Zone(f"{region.name}{letter}", f"{region.short_name}-az{n}", region.name, region.long_name)
        for letter, n in region.zones
    )


_ZONES: dict[str, tuple[Zone, ...]] = {r.name: _zones_of(r) for r in _REGIONS}
_ZONE_BY_NAME: dict[str, Zone] = {z.name: z for zs in _ZONES.values() for z in zs}
_ZONE_BY_ID: dict[str, Zone] = {z.zone_id: z for zs in _ZONES.values() for z in zs}


def all_regions() -> tuple[Region, ...]:
    """Every commercial region, sorted by name."""
    return tuple(sorted(_REGIONS, key=lambda r: r.name))


def is_known_region(name: str) -> bool:
    return name in _BY_NAME


def region_info(name: str) -> Region | None:
    return _BY_NAME.get(name)


def opt_in_status(region: str, enabled_regions: frozenset[str] = frozenset()) -> str:
    """The OptInStatus an account sees: ``enabled_regions`` are opt-in regions it enabled."""
    r = _BY_NAME[region]
    if not r.opt_in_required:
        return OPT_IN_NOT_REQUIRED
    return OPTED_IN if region in enabled_regions else NOT_OPTED_IN


def availability_zones(region: str) -> tuple[Zone, ...]:
    """The zones of ``region`` in name order; empty for an unknown region."""
    return _ZONES.get(region, ())


def zone(name_or_id: str) -> Zone | None:
    """A zone by name (``us-east-1a``) or id (``use1-az1``), in any region."""
    return _ZONE_BY_NAME.get(name_or_id) or _ZONE_BY_ID.get(name_or_id)


def is_zone_in_region(zone_name: str, region: str) -> bool:
    z = _ZONE_BY_NAME.get(zone_name)
    return z is not None and z.region == region
