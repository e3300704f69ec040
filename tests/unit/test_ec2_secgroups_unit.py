"""EC2 filter matching, paging and security group rule helpers (no server)."""

from __future__ import annotations

import pytest

from ebscrypt.engines.ec2 import filters as F
from ebscrypt.engines.ec2 import network as N
from ebscrypt.engines.ec2.records import SecurityGroupRule
from ebscrypt.services.ec2 import security_group_views as V
from ebscrypt.errors import ServiceError

GETTERS = {"name": lambda o: o["name"], "flag": lambda o: o["flag"], "ports": lambda o: o["ports"]}
OBJS = [
    {"name": "web-1", "flag": True, "ports": [22, 443], "tags": {"env": "prod"}},
    {"name": "web-2", "flag": False, "ports": [80], "tags": {"env": "dev", "team": "a"}},
    {"name": "db*", "flag": False, "ports": [], "tags": {}},
]


def names(filters):
    return [o["name"] for o in F.select_matching(OBJS, filters, GETTERS, lambda o: o["tags"])]


@pytest.mark.parametrize("filters,expected", [
    ([], ["web-1", "web-2", "db*"]),
    ([{"Name": "name", "Values": ["web-*"]}], ["web-1", "web-2"]),
    ([{"Name": "name", "Values": ["web-?"]}], ["web-1", "web-2"]),
    ([{"Name": "name", "Values": ["web-"]}], []),                       # whole-value match
    ([{"Name": "name", "Values": ["WEB-1"]}], []),                      # case-sensitive
    ([{"Name": "name", "Values": ["db\\*"]}], ["db*"]),                 # escaped wildcard
    ([{"Name": "name", "Values": ["web-1", "db*"]}], ["web-1", "db*"]),  # values are alternatives
    ([{"Name": "flag", "Values": ["true"]}], ["web-1"]),                # booleans as true/false
    ([{"Name": "ports", "Values": ["443"]}], ["web-1"]),                # any element of a list
    ([{"Name": "tag:env", "Values": ["prod", "dev"]}], ["web-1", "web-2"]),
    ([{"Name": "tag:env", "Values": ["*"]}, {"Name": "flag", "Values": ["false"]}], ["web-2"]),  # AND
    ([{"Name": "tag-key", "Values": ["team"]}], ["web-2"]),
    ([{"Name": "tag-value", "Values": ["a"]}], ["web-2"]),
])
def test_filter_semantics(filters, expected) -> None:
    assert names(filters) == expected


def test_unknown_filter_is_refused_even_with_no_objects() -> None:
    with pytest.raises(ServiceError) as e:
        F.select_matching([], [{"Name": "nope", "Values": ["x"]}], GETTERS, None)
    assert (e.value.code, e.value.message) == ("InvalidParameterValue", "The filter 'nope' is invalid")
    with pytest.raises(ServiceError):  # tag filters only where the resource has tags
        F.select_matching([], [{"Name": "tag:x", "Values": ["y"]}], GETTERS, None)


@pytest.mark.parametrize("given,expected", [
    ("tcp", "tcp"), ("TCP", "tcp"), ("6", "tcp"), ("udp", "udp"), ("17", "udp"), ("icmp", "icmp"),
    ("1", "icmp"), ("icmpv6", "icmpv6"), ("58", "icmpv6"), ("-1", "-1"), ("all", "-1"), ("50", "50"),
])
def test_protocols(given, expected) -> None:
    assert N.normalize_protocol(given) == expected


@pytest.mark.parametrize("bad", ["tcpx", "256", "", None])
def test_bad_protocols(bad) -> None:
    with pytest.raises(ServiceError) as e:
        N.normalize_protocol(bad)
    assert e.value.code == "InvalidParameterValue"


def test_port_rules() -> None:
    assert N._ports("tcp", 0, 0) == (0, 0)  # Packer with communicator "none" asks for port 0
    assert N._ports("icmp", None, None) == (-1, -1)
    assert N._ports("-1", 1, 2) == (None, None)
    for fp, tp in ((None, 22), (22, None), (23, 22), (-1, 80), (0, 65536)):
        with pytest.raises(ServiceError):
            N._ports("tcp", fp, tp)


def test_duplicate_message_matches_aws_wording() -> None:
    r = N.Rule(False, "tcp", 22, 22, cidr_ipv4="0.0.0.0/0")
    assert r.describe_for_error() == "peer: 0.0.0.0/0, TCP, from port: 22, to port: 22, ALLOW"
    r = N.Rule(False, "-1", None, None, ref_group_id="sg-0123456789abcdef0")
    assert r.describe_for_error() == "peer: sg-0123456789abcdef0, ALL, ALLOW"


def test_permissions_grouping_keeps_rule_order() -> None:
    def row(**kw):
        base = dict(id="sgr-1", group_id="sg-0", account="111111111111", region="us-east-1", is_egress=False,
                    ip_protocol="tcp", from_port=22, to_port=22, cidr_ipv4=None, cidr_ipv6=None,
                    prefix_list_id=None, ref_group_id=None, ref_user_id=None, description=None, position=0)
        base.update(kw)
        return SecurityGroupRule(**base)

    perms = V.permissions([
        row(cidr_ipv4="10.0.0.0/8", description="corp"), row(ip_protocol="-1", from_port=None, to_port=None,
                                                             ref_group_id="sg-1", ref_user_id="111111111111"),
        row(cidr_ipv6="::/0"),
    ], {"sg-1": "vpc-1"})
    assert perms == [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [],
         "IpRanges": [{"Description": "corp", "CidrIp": "10.0.0.0/8"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
         "PrefixListIds": []},
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"UserId": "111111111111", "GroupId": "sg-1", "VpcId": "vpc-1"}],
         "IpRanges": [], "Ipv6Ranges": [], "PrefixListIds": []},
    ]


def test_group_id_format() -> None:
    N.check_group_id("sg-12345678")
    N.check_group_id("sg-0123456789abcdef0")
    for bad in ("sg-123", "sg-0123456789ABCDEF0", "i-0123456789abcdef0", "default"):
        with pytest.raises(ServiceError) as e:
            N.check_group_id(bad)
        assert e.value.code == "InvalidGroupId.Malformed"
