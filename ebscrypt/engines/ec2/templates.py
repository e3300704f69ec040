"""Launch templates: named, versioned RunInstances parameter sets.

A template has versions 1..N (``latest_version``) and a default version; each version
stores its ``LaunchTemplateData`` as given (the model's ``RequestLaunchTemplateData``).
RunInstances resolves a template reference to one version's data and lets its own
parameters override it (:func:`resolve`).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from ebscrypt.context import RequestContext
from ebscrypt.domain.outcome import check_key_dependency
from ebscrypt.engines.ec2.ids import new_id
from ebscrypt.engines.ec2.tags import delete_tags_of, put_tags, tag_specs, tags_for
from ebscrypt.errors import ServiceError
from ebscrypt.storage.tables.ec2_images import ec2_launch_template_versions as versions_t
from ebscrypt.storage.tables.ec2_images import ec2_launch_templates as templates_t

_NAME_RE = re.compile(r"^[a-zA-Z0-9().\-/_]{3,128}$")
_ID_RE = re.compile(r"^lt-[0-9a-f]{8,17}$")

# Members of RequestLaunchTemplateData that ResponseLaunchTemplateData also has, with the
# same shape, and that we echo back in DescribeLaunchTemplateVersions.
_ECHOED = (
    "KernelId", "EbsOptimized", "BlockDeviceMappings", "ImageId", "InstanceType", "KeyName",
    "Monitoring", "Placement", "RamDiskId", "DisableApiTermination",
    "InstanceInitiatedShutdownBehavior", "UserData", "TagSpecifications", "SecurityGroupIds",
    "SecurityGroups", "CreditSpecification", "CpuOptions", "HibernationOptions",
    "EnclaveOptions", "DisableApiStop",
)


# ----------------------------------------------------------------------------- errors


def _not_found_id(template_id: str) -> ServiceError:
    return ServiceError(
        f"The specified launch template, with template ID {template_id}, does not exist.",
        code="InvalidLaunchTemplateId.NotFound",
    )


def _not_found_name(name: str | None = None) -> ServiceError:
    return ServiceError(
        "At least one of the launch templates specified in the request does not exist.",
        code="InvalidLaunchTemplateName.NotFoundException",
    )


def _malformed_id(template_id: str) -> ServiceError:
    return ServiceError(
        f"The specified ID for the launch template '{template_id}' is not valid. Specify a valid "
        "launch template ID and try again.",
        code="InvalidLaunchTemplateId.Malformed",
    )


def _version_not_found(template_id: str, version: str) -> ServiceError:
    return ServiceError(
        f"Could not find launch template version {version} for launch template {template_id}.",
        code="InvalidLaunchTemplateId.VersionNotFound",
    )


# ----------------------------------------------------------------------------- lookups


def _load(conn: Connection, account: str, region: str, *, template_id: str | None, name: str | None) -> dict[str, Any]:
    if template_id and name:
        raise ServiceError(
            "Only one of LaunchTemplateId or LaunchTemplateName can be specified.",
            code="InvalidParameterCombination",
        )
    if not template_id and not name:
        raise ServiceError(
            "The request must contain the parameter launchTemplateName or launchTemplateId",
            code="MissingParameter",
        )
    if template_id:
        if not _ID_RE.match(template_id):
            raise _malformed_id(template_id)
        cond = templates_t.c.template_id == template_id
    else:
        cond = templates_t.c.name == name
    row = conn.execute(
        select(templates_t).where(cond, templates_t.c.account == account, templates_t.c.region == region)
    ).mappings().first()
    if row is None:
        raise _not_found_id(template_id) if template_id else _not_found_name(name)
    return dict(row)


def _version_row(conn: Connection, template: dict[str, Any], version: str | int | None) -> dict[str, Any]:
    number = _version_number(template, version)
    row = conn.execute(
        select(versions_t).where(versions_t.c.template_id == template["template_id"], versions_t.c.version == number)
    ).mappings().first()
    if row is None:
        raise _version_not_found(template["template_id"], str(version))
    return dict(row)


# Version numbers are sent as strings (the model's ``Versions.N``, ``MinVersion``…) and
# stored as 64-bit integers: text that is not a number within that range names no version
# (int("abc") raised ValueError, and 20 digits overflowed the SQL parameter: both 500s).
_MAX_VERSION = 2**63 - 1
_DIGITS_RE = re.compile(r"^[0-9]{1,40}$")


def _as_version(text: str | int) -> int | None:
    """A version number as sent, or None when ``text`` is not one."""
    text = str(text).strip()
    if not _DIGITS_RE.match(text):
        return None
    number = int(text)
    return number if number <= _MAX_VERSION else None


def _too_large(text: str) -> bool:
    """Digits beyond a 64-bit version number: not a version EC2 could return."""
    return bool(_DIGITS_RE.match(str(text).strip())) and _as_version(text) is None


def _version_bound(text: str | None, param: str) -> int | None:
    """``MinVersion`` / ``MaxVersion`` as a number (None: not given)."""
    if text is None:
        return None
    number = _as_version(text)
    if number is None:
        raise ServiceError(
            f"Value ({text}) for parameter {param} is invalid. Specify a launch template version number.",
            code="InvalidParameterValue",
        )
    return number


def _version_number(template: dict[str, Any], version: str | int | None) -> int:
    if version is None or version == "" or version == "$Default":
        return int(template["default_version"])
    if version == "$Latest":
        return int(template["latest_version"])
    number = _as_version(version)
    if number is None:
        raise ServiceError(
            f"The launch template version '{version}' is not valid. Specify a version number, "
            "$Latest or $Default.",
            code="InvalidLaunchTemplateId.VersionNotFound",
        )
    return number


def _data_json(data: dict[str, Any]) -> str:
    """LaunchTemplateData as stored: JSON, with timestamp members (``SpotOptions.ValidUntil``
    …) as ISO 8601 text, as they arrived on the wire; RunInstances reads them back as such."""
    return json.dumps(data, default=_json_value)


def _json_value(value: Any) -> Any:
    # RequestLaunchTemplateData's only non-JSON type is the timestamp (it has no blob).
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"a launch template member of type {type(value).__name__} cannot be stored")


# ----------------------------------------------------------------------------- views


def template_view(conn: Connection, template: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "LaunchTemplateId": template["template_id"],
        "LaunchTemplateName": template["name"],
        "CreateTime": template["created_at"],
        "CreatedBy": template["created_by"],
        "DefaultVersionNumber": int(template["default_version"]),
        "LatestVersionNumber": int(template["latest_version"]),
    }
    tags = tags_for(conn, template["account"], [template["template_id"]])[template["template_id"]]
    return out | {"Tags": tags or None}  # None: left out by the codec (docs/architecture.md, views)


def version_view(template: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(row["data"])
    return {
        "LaunchTemplateId": template["template_id"],
        "LaunchTemplateName": template["name"],
        "VersionNumber": int(row["version"]),
        "CreateTime": row["created_at"],
        "CreatedBy": row["created_by"],
        "DefaultVersion": int(row["version"]) == int(template["default_version"]),
        "LaunchTemplateData": {k: data[k] for k in _ECHOED if k in data},
        "VersionDescription": row["description"] or None,
    }


# ----------------------------------------------------------------------------- operations


def _check_data(data: dict[str, Any] | None) -> dict[str, Any]:
    data = dict(data or {})
    for bdm in data.get("BlockDeviceMappings") or []:
        ebs = bdm.get("Ebs") or {}
        # R-OUT-1 holds for templates too: EC2 refuses such a template version.
        check_key_dependency(ebs.get("Encrypted"), ebs.get("KmsKeyId"))
    return data


def create_template(
    ctx: RequestContext,
    *,
    name: str,
    data: dict[str, Any] | None,
    description: str | None,
    tag_spec_list: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    if not name or not _NAME_RE.match(name):
        raise ServiceError(
            f"The launch template name '{name}' is not valid: use 3 to 128 characters: letters, "
            "digits, ( ) . - / and _.",
            code="InvalidLaunchTemplateName.MalformedException",
        )
    data = _check_data(data)
    caller = ctx.caller
    now = ctx.runtime.clock.now()
    template_id = new_id("lt")
    with ctx.runtime.db.begin() as conn:
        exists = conn.execute(
            select(templates_t.c.template_id).where(
                templates_t.c.account == caller.account,
                templates_t.c.region == caller.region,
                templates_t.c.name == name,
            )
        ).first()
        if exists:
            raise ServiceError(
                "Launch template name already in use.",
                code="InvalidLaunchTemplateName.AlreadyExistsException",
            )
        row = dict(
            template_id=template_id,
            account=caller.account,
            region=caller.region,
            name=name,
            default_version=1,
            latest_version=1,
            created_by=caller.arn,
            created_at=now,
        )
        conn.execute(insert(templates_t).values(**row))
        conn.execute(
            insert(versions_t).values(
                template_id=template_id, version=1, description=description, data=_data_json(data),
                created_by=caller.arn, created_at=now,
            )
        )
        tags = tag_specs(tag_spec_list, "launch-template")
        if tags:
            put_tags(conn, caller.account, caller.region, template_id, tags)
        return template_view(conn, row)


def create_version(
    ctx: RequestContext,
    *,
    template_id: str | None,
    name: str | None,
    source_version: str | None,
    data: dict[str, Any] | None,
    description: str | None,
) -> dict[str, Any]:
    caller = ctx.caller
    data = _check_data(data)
    now = ctx.runtime.clock.now()
    with ctx.runtime.db.begin() as conn:
        template = _load(conn, caller.account, caller.region, template_id=template_id, name=name)
        if source_version is not None:
            base = json.loads(_version_row(conn, template, source_version)["data"])
            base.update(data)  # the new version's members replace the source's
            data = base
        number = int(template["latest_version"]) + 1
        conn.execute(
            insert(versions_t).values(
                template_id=template["template_id"], version=number, description=description,
                data=_data_json(data), created_by=caller.arn, created_at=now,
            )
        )
        conn.execute(
            update(templates_t).where(templates_t.c.template_id == template["template_id"]).values(latest_version=number)
        )
        template["latest_version"] = number
        row = conn.execute(
            select(versions_t).where(versions_t.c.template_id == template["template_id"], versions_t.c.version == number)
        ).mappings().one()
        return version_view(template, dict(row))


def modify_default(ctx: RequestContext, *, template_id: str | None, name: str | None, default: str | None) -> dict[str, Any]:
    caller = ctx.caller
    with ctx.runtime.db.begin() as conn:
        template = _load(conn, caller.account, caller.region, template_id=template_id, name=name)
        if default is not None:
            number = _version_row(conn, template, default)["version"]
            conn.execute(
                update(templates_t).where(templates_t.c.template_id == template["template_id"]).values(default_version=number)
            )
            template["default_version"] = number
        return template_view(conn, template)


def delete_template(ctx: RequestContext, *, template_id: str | None, name: str | None) -> dict[str, Any]:
    caller = ctx.caller
    with ctx.runtime.db.begin() as conn:
        template = _load(conn, caller.account, caller.region, template_id=template_id, name=name)
        view = template_view(conn, template)
        conn.execute(delete(versions_t).where(versions_t.c.template_id == template["template_id"]))
        conn.execute(delete(templates_t).where(templates_t.c.template_id == template["template_id"]))
        delete_tags_of(conn, template["template_id"])
        return view


def delete_versions(
    ctx: RequestContext, *, template_id: str | None, name: str | None, versions: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    caller = ctx.caller
    ok: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with ctx.runtime.db.begin() as conn:
        template = _load(conn, caller.account, caller.region, template_id=template_id, name=name)
        ident = {"LaunchTemplateId": template["template_id"], "LaunchTemplateName": template["name"]}
        for v in versions:  # refused before anything is deleted
            if _too_large(v):
                raise ServiceError(
                    f"Value ({v}) for parameter launchTemplateVersion is invalid. "
                    "Specify a launch template version number.",
                    code="InvalidParameterValue",
                )
        for v in versions:
            number = _as_version(v)
            if number is None:
                failed.append({**ident, "VersionNumber": 0, "ResponseError": {
                    "Code": "launchTemplateVersionDoesNotExist",
                    "Message": f"The launch template version {v} does not exist."}})
                continue
            if number == int(template["default_version"]):
                failed.append({**ident, "VersionNumber": number, "ResponseError": {
                    "Code": "launchTemplateVersionIsDefault",
                    "Message": "Cannot delete the default version of a launch template."}})
                continue
            res = conn.execute(
                delete(versions_t).where(versions_t.c.template_id == template["template_id"], versions_t.c.version == number)
            )
            if res.rowcount:
                ok.append({**ident, "VersionNumber": number})
            else:
                failed.append({**ident, "VersionNumber": number, "ResponseError": {
                    "Code": "launchTemplateVersionDoesNotExist",
                    "Message": f"The launch template version {number} does not exist."}})
    return ok, failed


def describe_templates(
    ctx: RequestContext, *, ids: list[str] | None, names: list[str] | None
) -> list[dict[str, Any]]:
    """Templates of the caller (account + region), optionally narrowed to ids / names."""
    caller = ctx.caller
    for tid in ids or []:
        if not _ID_RE.match(tid):
            raise _malformed_id(tid)
    with ctx.runtime.db.read() as conn:
        query = select(templates_t).where(templates_t.c.account == caller.account, templates_t.c.region == caller.region)
        if ids:
            query = query.where(templates_t.c.template_id.in_(ids))
        if names:
            query = query.where(templates_t.c.name.in_(names))
        rows = [dict(r) for r in conn.execute(query.order_by(templates_t.c.created_at, templates_t.c.template_id)).mappings()]
        found_ids = {r["template_id"] for r in rows}
        for tid in ids or []:
            if tid not in found_ids:
                raise _not_found_id(tid)
        found_names = {r["name"] for r in rows}
        for n in names or []:
            if n not in found_names:
                raise _not_found_name(n)
        return [template_view(conn, r) for r in rows]


def describe_versions(
    ctx: RequestContext,
    *,
    template_id: str | None,
    name: str | None,
    versions: list[str] | None,
    min_version: str | None,
    max_version: str | None,
) -> list[dict[str, Any]]:
    caller = ctx.caller
    low, high = _version_bound(min_version, "minVersion"), _version_bound(max_version, "maxVersion")
    with ctx.runtime.db.read() as conn:
        if template_id or name:
            templates = [_load(conn, caller.account, caller.region, template_id=template_id, name=name)]
        else:
            # All templates of the account: only $Latest / $Default may be asked for.
            for v in versions or []:
                if v not in ("$Latest", "$Default"):
                    raise ServiceError(
                        "Specify a launch template ID or name to describe version numbers.",
                        code="InvalidParameterCombination",
                    )
            templates = [
                dict(r)
                for r in conn.execute(
                    select(templates_t).where(templates_t.c.account == caller.account, templates_t.c.region == caller.region)
                ).mappings()
            ]
        out: list[dict[str, Any]] = []
        for template in templates:
            rows = [
                dict(r)
                for r in conn.execute(
                    select(versions_t).where(versions_t.c.template_id == template["template_id"]).order_by(versions_t.c.version)
                ).mappings()
            ]
            if versions:
                wanted = {_version_number(template, v) for v in versions}
                present = {r["version"] for r in rows}
                missing = sorted(wanted - present)
                if missing and (template_id or name):
                    raise _version_not_found(template["template_id"], str(missing[0]))
                rows = [r for r in rows if r["version"] in wanted]
            if low is not None:
                rows = [r for r in rows if r["version"] >= low]
            if high is not None:
                rows = [r for r in rows if r["version"] <= high]
            out.extend(version_view(template, r) for r in rows)
        out.sort(key=lambda v: (v["LaunchTemplateId"], -v["VersionNumber"]))
        return out


def resolve(ctx: RequestContext, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A RunInstances ``LaunchTemplate`` reference → (template view ids, version data)."""
    caller = ctx.caller
    with ctx.runtime.db.read() as conn:
        try:
            template = _load(
                conn, caller.account, caller.region,
                template_id=spec.get("LaunchTemplateId"), name=spec.get("LaunchTemplateName"),
            )
        except ServiceError as err:
            if err.code == "MissingParameter":
                raise ServiceError(
                    "The launch template specification must contain LaunchTemplateId or LaunchTemplateName.",
                    code="InvalidParameterValue",
                ) from None
            raise
        row = _version_row(conn, template, spec.get("Version"))
        return (
            {"LaunchTemplateId": template["template_id"], "Version": str(row["version"])},
            json.loads(row["data"]),
        )
