"""Security groups and rules through real boto3 EC2 clients (issue 6: Packer's
CreateSecurityGroup / AuthorizeSecurityGroupIngress / DescribeSecurityGroups / DeleteSecurityGroup)."""

from __future__ import annotations

import re
import uuid

import pytest
from botocore.exceptions import ClientError

A, B = "111111111111", "222222222222"
SSH = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}


def gname() -> str:
    return f"packer_{uuid.uuid4().hex[:12]}"


def err(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    e = excinfo.value.response["Error"]
    return e["Code"], e["Message"]


def default_vpc(ec2) -> str:
    return ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]


def test_packer_flow_create_wait_authorize_describe_delete(aws) -> None:
    ec2 = aws("ec2", account=A)
    n = gname()
    out = ec2.create_security_group(GroupName=n, Description="Temporary group for Packer")
    gid = out["GroupId"]
    assert re.fullmatch(r"sg-[0-9a-f]{17}", gid)
    assert out["SecurityGroupArn"] == f"arn:aws:ec2:us-east-1:{A}:security-group/{gid}"
    ec2.get_waiter("security_group_exists").wait(GroupIds=[gid])
    auth = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH])
    assert auth["Return"] is True
    [rule] = auth["SecurityGroupRules"]
    assert re.fullmatch(r"sgr-[0-9a-f]{17}", rule["SecurityGroupRuleId"])
    assert (rule["GroupId"], rule["IsEgress"], rule["IpProtocol"], rule["FromPort"], rule["ToPort"],
            rule["CidrIpv4"], rule["GroupOwnerId"]) == (gid, False, "tcp", 22, 22, "0.0.0.0/0", A)
    [g] = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    assert g["GroupName"] == n and g["Description"] == "Temporary group for Packer"
    assert g["VpcId"] == default_vpc(ec2) and g["OwnerId"] == A
    assert g["IpPermissions"] == [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [],
                                   "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [], "PrefixListIds": []}]
    # a new VPC group allows all outbound traffic
    assert g["IpPermissionsEgress"] == [{"IpProtocol": "-1", "UserIdGroupPairs": [],
                                         "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [],
                                         "PrefixListIds": []}]
    deleted = ec2.delete_security_group(GroupId=gid)
    assert deleted["Return"] is True and deleted["GroupId"] == gid
    with pytest.raises(ClientError) as e:
        ec2.describe_security_groups(GroupIds=[gid])
    assert err(e) == ("InvalidGroup.NotFound", f"The security group '{gid}' does not exist")
    with pytest.raises(ClientError) as e:
        ec2.delete_security_group(GroupId=gid)
    assert err(e)[0] == "InvalidGroup.NotFound"


def test_default_group_exists_and_cannot_be_deleted(aws) -> None:
    ec2 = aws("ec2", account="666666666666")
    [g] = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"]
    assert g["Description"] == "default VPC security group" and g["VpcId"] == default_vpc(ec2)
    assert g["IpPermissions"][0]["IpProtocol"] == "-1"
    assert g["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"] == g["GroupId"]
    with pytest.raises(ClientError) as e:
        ec2.delete_security_group(GroupId=g["GroupId"])
    assert err(e) == ("CannotDelete",
                      f'the specified group: "{g["GroupId"]}" name: "default" cannot be deleted by a user')
    with pytest.raises(ClientError) as e:
        ec2.delete_security_group(GroupName="default")
    assert err(e)[0] == "CannotDelete"


def test_create_errors(aws) -> None:
    ec2 = aws("ec2", account=A)
    n = gname()
    ec2.create_security_group(GroupName=n, Description="d")
    vpc = default_vpc(ec2)
    with pytest.raises(ClientError) as e:
        ec2.create_security_group(GroupName=n, Description="d")
    assert err(e) == ("InvalidGroup.Duplicate", f"The security group '{n}' already exists for VPC '{vpc}'")
    with pytest.raises(ClientError) as e:
        ec2.create_security_group(GroupName=gname(), Description="d", VpcId="vpc-0123456789abcdef0")
    assert err(e) == ("InvalidVpcID.NotFound", "The vpc ID 'vpc-0123456789abcdef0' does not exist")
    with pytest.raises(ClientError) as e:
        ec2.create_security_group(GroupName="sg-lookalike", Description="d")
    assert err(e)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        ec2.describe_security_groups(GroupIds=["not-a-group"])
    assert err(e) == ("InvalidGroupId.Malformed", 'Invalid id: "not-a-group" (expecting "sg-...")')
    with pytest.raises(ClientError) as e:
        ec2.describe_security_groups(GroupNames=["nope"])
    assert err(e) == ("InvalidGroup.NotFound", f"The security group 'nope' does not exist in default VPC '{vpc}'")
    with pytest.raises(ClientError) as e:
        ec2.create_security_group(GroupName=gname(), Description="d", DryRun=True)
    assert err(e)[0] == "DryRunOperation"


def test_rules_duplicates_revoke_and_describe_rules(aws) -> None:
    ec2 = aws("ec2", account=A)
    gid = ec2.create_security_group(GroupName=gname(), Description="rules")["GroupId"]
    src = ec2.create_security_group(GroupName=gname(), Description="source")["GroupId"]
    perms = [
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
         "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "corp"}, {"CidrIp": "192.168.0.0/16"}],
         "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": src}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ]
    rules = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=perms)["SecurityGroupRules"]
    assert len(rules) == 5
    [g] = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    by_proto = {p["IpProtocol"]: p for p in g["IpPermissions"]}
    assert by_proto["tcp"]["IpRanges"] == [{"CidrIp": "10.0.0.0/8", "Description": "corp"},
                                           {"CidrIp": "192.168.0.0/16"}]
    assert by_proto["tcp"]["Ipv6Ranges"] == [{"CidrIpv6": "::/0"}]
    assert by_proto["-1"]["UserIdGroupPairs"][0]["GroupId"] == src
    assert by_proto["-1"]["UserIdGroupPairs"][0]["UserId"] == A
    assert (by_proto["icmp"]["FromPort"], by_proto["icmp"]["ToPort"]) == (8, -1)

    # the same rule again: refused, and nothing of the request is added
    with pytest.raises(ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "1.2.3.4/32"}]},
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    assert err(e) == ("InvalidPermission.Duplicate",
                      'the specified rule "peer: 10.0.0.0/8, TCP, from port: 443, to port: 443, ALLOW" already exists')
    with pytest.raises(ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": src}]}])
    assert err(e) == ("InvalidPermission.Duplicate", f'the specified rule "peer: {src}, ALL, ALLOW" already exists')
    all_rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]
    assert len([r for r in all_rules if not r["IsEgress"]]) == 5 and len(all_rules) == 6
    assert not any(r.get("CidrIpv4") == "1.2.3.4/32" for r in all_rules)

    # the source group is referenced: it cannot be deleted yet
    with pytest.raises(ClientError) as e:
        ec2.delete_security_group(GroupId=src)
    assert err(e) == ("DependencyViolation", f"resource {src} has a dependent object")

    # revoke by permission and by rule id
    out = ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": src}]}])
    assert out["Return"] is True and out["RevokedSecurityGroupRules"][0]["ReferencedGroupId"] == src
    ec2.delete_security_group(GroupId=src)
    icmp_rule = next(r for r in rules if r["IpProtocol"] == "icmp")
    out = ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=[icmp_rule["SecurityGroupRuleId"]])
    assert [r["SecurityGroupRuleId"] for r in out["RevokedSecurityGroupRules"]] == [icmp_rule["SecurityGroupRuleId"]]
    # a rule that is not there: no error, reported back as unknown
    out = ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "8.8.8.8/32"}]}])
    assert out["Return"] is False and out["UnknownIpPermissions"][0]["FromPort"] == 53
    with pytest.raises(ClientError) as e:
        ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=["sgr-0123456789abcdef0"])
    assert err(e)[0] == "InvalidSecurityGroupRuleId.NotFound"
    left = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissions"]
    assert [p["IpProtocol"] for p in left] == ["tcp"]


def test_egress_rules_and_legacy_parameters(aws) -> None:
    ec2 = aws("ec2", account=A)
    gid = ec2.create_security_group(GroupName=gname(), Description="egress")["GroupId"]
    ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[{"IpProtocol": "-1",
                                                                  "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    ec2.authorize_security_group_egress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    # legacy (pre-IpPermissions) form, as older tools send it
    ec2.authorize_security_group_ingress(GroupId=gid, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
    [g] = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    assert [(p["IpProtocol"], p["FromPort"]) for p in g["IpPermissionsEgress"]] == [("tcp", 443)]
    assert [(p["IpProtocol"], p["FromPort"]) for p in g["IpPermissions"]] == [("tcp", 22)]
    with pytest.raises(ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "300.0.0.0/8"}]}])
    assert err(e)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "bogus", "FromPort": 1, "ToPort": 2, "IpRanges": [{"CidrIp": "1.0.0.0/8"}]}])
    assert err(e)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId="sg-0123456789abcdef0", IpPermissions=[SSH])
    assert err(e)[0] == "InvalidGroup.NotFound"


def test_rules_per_group_quota(aws) -> None:
    ec2 = aws("ec2", account=A)
    gid = ec2.create_security_group(GroupName=gname(), Description="quota")["GroupId"]
    ranges = [{"CidrIp": f"10.0.{i}.0/24"} for i in range(61)]
    with pytest.raises(ClientError) as e:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": ranges}])
    assert err(e) == ("RulesPerSecurityGroupLimitExceeded",
                      "The maximum number of rules per security group has been reached.")
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": ranges[:60]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
    [g] = ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    assert len(g["IpPermissions"][0]["IpRanges"]) == 60 and len(g["IpPermissions"][0]["Ipv6Ranges"]) == 1


def test_filters_and_names(aws) -> None:
    ec2 = aws("ec2", account="777777777777")
    g1 = ec2.create_security_group(GroupName="web", Description="web tier", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": [{"Key": "tier", "Value": "web"}]}])["GroupId"]
    g2 = ec2.create_security_group(GroupName="db", Description="db tier")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=g2, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": g1}]}])

    def ids(**kw) -> set[str]:
        return {g["GroupId"] for g in ec2.describe_security_groups(**kw)["SecurityGroups"]}

    assert ids(GroupNames=["web", "db"]) == {g1, g2}
    assert ids(Filters=[{"Name": "group-name", "Values": ["w*"]}]) == {g1}
    assert ids(Filters=[{"Name": "tag:tier", "Values": ["web"]}]) == {g1}
    assert ids(Filters=[{"Name": "ip-permission.group-id", "Values": [g1]}]) == {g2}
    assert ids(Filters=[{"Name": "ip-permission.from-port", "Values": ["5432"]}]) == {g2}
    assert len(ids(Filters=[{"Name": "vpc-id", "Values": [default_vpc(ec2)]}])) == 3  # + default
    ec2.delete_security_group(GroupName="db")
    assert ids(GroupNames=["web"]) == {g1}
    page = ec2.describe_security_groups(MaxResults=5)
    assert len(page["SecurityGroups"]) == 2 and "NextToken" not in page


def test_accounts_are_isolated(aws) -> None:
    a, b = aws("ec2", account=A), aws("ec2", account=B)
    n = gname()
    gid = a.create_security_group(GroupName=n, Description="a's")["GroupId"]
    assert gid not in {g["GroupId"] for g in b.describe_security_groups()["SecurityGroups"]}
    for call in (lambda: b.describe_security_groups(GroupIds=[gid]),
                 lambda: b.delete_security_group(GroupId=gid),
                 lambda: b.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH])):
        with pytest.raises(ClientError) as e:
            call()
        assert err(e)[0] == "InvalidGroup.NotFound"
    b.create_security_group(GroupName=n, Description="b's own, same name")
    assert a.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]["IpPermissions"] == []
    assert gid not in {g["GroupId"] for g in aws("ec2", account=A, region="eu-west-1")
                       .describe_security_groups()["SecurityGroups"]}


def _image(ec2) -> str:
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return ec2.register_image(Name=gname(), RootDeviceName="/dev/xvda", Architecture="x86_64",
                              VirtualizationType="hvm", BlockDeviceMappings=[
                                  {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}])["ImageId"]


def test_group_in_use_by_an_instance_cannot_be_deleted_until_it_terminates(aws) -> None:
    """Packer deletes its temporary group after terminating the instance (retrying on
    DependencyViolation); RunInstances places the instance in the default VPC's subnet."""
    ec2 = aws("ec2", account="888888888888")
    gid = ec2.create_security_group(GroupName=gname(), Description="in use")["GroupId"]
    key = f"kp-{uuid.uuid4().hex[:8]}"
    ec2.create_key_pair(KeyName=key, KeyType="ed25519")
    inst = ec2.run_instances(ImageId=_image(ec2), InstanceType="t3.micro", MinCount=1, MaxCount=1,
                             KeyName=key, SecurityGroupIds=[gid])["Instances"][0]
    assert inst["VpcId"] == default_vpc(ec2)
    assert inst["SubnetId"] in {s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [gid]
    with pytest.raises(ClientError) as e:
        ec2.delete_security_group(GroupId=gid)
    assert err(e) == ("DependencyViolation", f"resource {gid} has a dependent object")
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[inst["InstanceId"]],
                                               WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert ec2.delete_security_group(GroupId=gid)["Return"] is True


def test_rule_tags_are_typed_security_group_rule(aws) -> None:
    ec2 = aws("ec2", account=A)
    gid = ec2.create_security_group(GroupName=gname(), Description="tagged rules")["GroupId"]
    [rule] = ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH])["SecurityGroupRules"]
    ec2.create_tags(Resources=[rule["SecurityGroupRuleId"]], Tags=[{"Key": "why", "Value": "ssh"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [rule["SecurityGroupRuleId"]]}])["Tags"]
    assert tags == [{"Key": "why", "Value": "ssh", "ResourceId": rule["SecurityGroupRuleId"],
                     "ResourceType": "security-group-rule"}]


def test_groups_and_rules_paging_with_the_common_token(aws) -> None:
    """Issue 11 item 5: DescribeSecurityGroups / DescribeSecurityGroupRules page by their sort
    key (creation order, rule position) with the token every EC2 Describe uses; a group
    deleted between two pages hides no other; a foreign token is InvalidNextToken."""
    ec2 = aws("ec2", account="333333333333")
    made = [ec2.create_security_group(GroupName=gname(), Description="paging")["GroupId"] for _ in range(7)]
    for gid in made[:3]:
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[SSH])
    everything = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]]
    assert set(made) <= set(everything) and len(everything) == len(set(everything))

    first = ec2.describe_security_groups(MaxResults=5)
    ids = [g["GroupId"] for g in first["SecurityGroups"]]
    assert ids == everything[:5]
    ec2.delete_security_group(GroupId=ids[-1])  # the last one returned goes before the next call
    rest = ec2.describe_security_groups(MaxResults=1000, NextToken=first["NextToken"])
    assert [g["GroupId"] for g in rest["SecurityGroups"]] == everything[5:] and "NextToken" not in rest

    rules = [r["SecurityGroupRuleId"] for r in ec2.describe_security_group_rules()["SecurityGroupRules"]]
    paged = [r["SecurityGroupRuleId"] for p in ec2.get_paginator("describe_security_group_rules").paginate(
        PaginationConfig={"PageSize": 5}) for r in p["SecurityGroupRules"]]
    assert paged == rules and len(rules) > 5

    for token in ("garbage!", "bzox"):
        with pytest.raises(ClientError) as e:
            ec2.describe_security_groups(MaxResults=5, NextToken=token)
        assert err(e) == ("InvalidNextToken", f"The token '{token}' is invalid.")
