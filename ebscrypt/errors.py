"""Errors that reach the caller as AWS error responses.

Every layer below the wire raises :class:`ServiceError` (or a subclass) carrying the AWS
error code, an actionable message and the HTTP status. The wire codec renders it in the
protocol's own envelope (EC2 XML, KMS ``__type``, EBS ``x-amzn-ErrorType`` + ``Reason``),
so no layer below the wire knows about XML or JSON.

Raise the typed errors below rather than ``ServiceError(message, code=...)``: each names
one AWS code and holds its message template, so a message is written once
(``MissingParameter("VolumeId")``, ``NotFound("InvalidVolume", vol_id)``,
``KmsNotFound.key(arn)``) and a layer that translates errors (the EBS direct APIs) tests
the type, never the message. The families:

- generic EC2/query codes: :class:`MissingParameter`, :class:`InvalidParameterValue`,
  :class:`InvalidParameterCombination`, :class:`IncorrectState`, … one class per code;
- EC2 resource codes ``{kind}.{suffix}`` with EC2's wording: :class:`NotFound`,
  :class:`Malformed`, :class:`Duplicate` (``kind`` is the code's prefix, e.g.
  ``InvalidVolume``), and a class for each one-off (:class:`VolumeZoneMismatch`,
  :class:`SnapshotInUse`, the launch-template name codes, …);
- KMS (``__type`` codes of the KMS model): :class:`KmsError` and its subclasses;
- EBS direct APIs (``x-amzn-ErrorType`` + ``Reason``): :class:`EbsError` and its subclasses;
- the wire's own (auth, unknown operation, model validation): rendered per protocol by
  :func:`ebscrypt.wire.codec.errors.wire_error`.

Engines below the services that are not AWS-shaped (``engines/blocks``) raise their own
exceptions; the layer above translates them.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error the caller caused (4xx) or a fault of ours (5xx), with AWS's code."""

    code: str = "InternalFailure"
    status: int = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        # Extra members of the error shape (EBS ``Reason``, …), serialized where the
        # protocol carries them.
        self.fields: dict[str, Any] = fields

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class CodedError(ServiceError):
    """A :class:`ServiceError` whose code is its class's: only the message is given."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message, **fields)


class InternalFailure(ServiceError):
    code = "InternalFailure"
    status = 500


class ServiceUnavailable(ServiceError):
    """A backend this server depends on (the block object store) did not answer or failed:
    retryable (HTTP 503, which the SDKs retry). The wire layer gives each protocol its own
    code for it; the message names the cause."""

    code = "ServiceUnavailable"
    status = 503


class UnknownOperation(ServiceError):
    """No handler for the operation: each protocol renders its own code for it."""

    code = "InvalidAction"
    status = 400


class ValidationError(ServiceError):
    """Input that does not match the operation's model (type, required member, range).

    The codec maps it to the protocol's code: EC2 ``MissingParameter`` /
    ``InvalidParameterValue``, KMS/EBS ``ValidationException``.
    """

    code = "ValidationException"
    status = 400

    def __init__(self, message: str, *, missing: bool = False, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.missing = missing


class SerializationError(ValidationError):
    """A body or member that does not deserialize (malformed JSON, a member of the wrong
    JSON type): JSON 1.1 services (KMS) answer ``SerializationException``."""

    code = "SerializationException"


class AuthError(ServiceError):
    """Authentication failed; ``kind`` says why so each protocol can name it its way."""

    status = 403

    def __init__(self, message: str, *, kind: str) -> None:
        # kind: "unknown_key" | "bad_signature" | "expired" | "missing"
        #       | "incomplete" (a header that selects the action is not signed)
        super().__init__(message)
        self.kind = kind


class PayloadTooLarge(ServiceError):
    code = "RequestEntityTooLarge"
    status = 413


# --------------------------------------------------------------------------- EC2 (query) codes


class MissingParameter(CodedError):
    """A required member is absent: ``The request must contain the parameter {name}``."""

    code = "MissingParameter"

    def __init__(self, name: str, message: str | None = None) -> None:
        # ``message``: EC2's own wording where it names no single member (ModifyVolume
        # with nothing to modify, a permission change with no change).
        super().__init__(message if message is not None else f"The request must contain the parameter {name}")
        self.name = name


class UnknownParameter(ServiceError):
    """A request field the operation does not have (EC2's own code and wording)."""

    code = "UnknownParameter"

    def __init__(self, name: str) -> None:
        super().__init__(f"The parameter {name} is not recognized")
        self.name = name


class InvalidParameterValue(CodedError):
    code = "InvalidParameterValue"


class InvalidParameterCombination(CodedError):
    code = "InvalidParameterCombination"


class InvalidParameter(CodedError):
    code = "InvalidParameter"


class InvalidParameterDependency(CodedError):
    """A member given without the one it depends on (R-OUT-1: ``KmsKeyId`` needs ``Encrypted``)."""

    code = "InvalidParameterDependency"


class IncorrectState(CodedError):
    code = "IncorrectState"


class UnsupportedOperation(CodedError):
    code = "UnsupportedOperation"


class InvalidRequest(CodedError):
    code = "InvalidRequest"


class InvalidID(CodedError):
    code = "InvalidID"


class InvalidNextToken(CodedError):
    """A ``NextToken`` this server did not issue (``services/ec2/paging.py``)."""

    code = "InvalidNextToken"

    def __init__(self, token: str) -> None:
        super().__init__(f"The token '{token}' is invalid.")
        self.token = token


class InvalidBlockDeviceMapping(CodedError):
    code = "InvalidBlockDeviceMapping"


class InvalidInstanceAttributeValue(CodedError):
    code = "InvalidInstanceAttributeValue"


class InvalidAMIAttributeItemValue(CodedError):
    code = "InvalidAMIAttributeItemValue"


class IncorrectInstanceState(CodedError):
    code = "IncorrectInstanceState"


class IncorrectModificationState(CodedError):
    code = "IncorrectModificationState"


class VolumeInUse(CodedError):
    code = "VolumeInUse"


class DependencyViolation(CodedError):
    code = "DependencyViolation"


class CannotDelete(CodedError):
    code = "CannotDelete"


class OperationNotPermitted(CodedError):
    code = "OperationNotPermitted"


class UnauthorizedOperation(CodedError):
    """EC2's refusal of an operation on a resource the caller may not use (HTTP 403)."""

    code = "UnauthorizedOperation"
    status = 403

    def __init__(self, message: str = "You are not authorized to perform this operation.") -> None:
        super().__init__(message)


class AuthFailure(CodedError):
    code = "AuthFailure"


class DryRunOperation(CodedError):
    """A ``DryRun`` request that would have succeeded (EC2 answers it as an error, 412)."""

    code = "DryRunOperation"
    status = 412

    def __init__(self) -> None:
        super().__init__("Request would have succeeded, but DryRun flag is set.")


class TagLimitExceeded(CodedError):
    code = "TagLimitExceeded"


class InstanceLimitExceeded(CodedError):
    code = "InstanceLimitExceeded"


class RulesPerSecurityGroupLimitExceeded(CodedError):
    code = "RulesPerSecurityGroupLimitExceeded"


class UnknownResource(CodedError):
    """``NotFound`` (404) of the explain/lineage tools: a resource or key id that is not known."""

    code = "NotFound"
    status = 404


# The wording EC2 gives for a resource that does not exist, by code prefix (the messages
# differ in their nouns and in the final period, as AWS's do).
_NOT_FOUND: dict[str, str] = {
    "InvalidVolume": "The volume '{id}' does not exist.",
    "InvalidSnapshot": "The snapshot '{id}' does not exist.",
    "InvalidInstanceID": "The instance ID '{id}' does not exist",
    "InvalidAMIID": "The image id '[{id}]' does not exist",
    "InvalidZone": "The zone '{id}' does not exist.",
    "InvalidKeyPair": "The key pair '{id}' does not exist",
    "InvalidVpcID": "The vpc ID '{id}' does not exist",
    "InvalidSubnetID": "The subnet ID '{id}' does not exist",
    "InvalidSecurityGroupRuleId": "The security group rule ID '{id}' does not exist",
}


class NotFound(CodedError):
    """``{kind}.NotFound`` (``kind`` is the code's prefix, e.g. ``InvalidVolume``), with
    EC2's wording for that kind unless ``message`` is given."""

    code = "NotFound"

    def __init__(self, kind: str, ident: str, message: str | None = None) -> None:
        template = _NOT_FOUND.get(kind, "The ID '{id}' does not exist")
        super().__init__(message if message is not None else template.format(id=ident))
        self.code = f"{kind}.NotFound"
        self.kind = kind
        self.ident = ident


class Malformed(CodedError):
    """``{kind}.Malformed``: an id that is not ``prefix-hex`` (EC2's wording)."""

    code = "Malformed"

    def __init__(self, kind: str, ident: str, message: str | None = None, *, prefix: str | None = None) -> None:
        if message is None:
            message = (f'Invalid id: "{ident}" (expecting "{prefix}-...")' if prefix
                       else f'Invalid id: "{ident}"')
        super().__init__(message)
        self.code = f"{kind}.Malformed"
        self.kind = kind
        self.ident = ident


class Duplicate(CodedError):
    """``{kind}.Duplicate``: a resource of that name or content already exists."""

    code = "Duplicate"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.code = f"{kind}.Duplicate"
        self.kind = kind


class InvalidKeyFormat(CodedError):
    code = "InvalidKey.Format"

    def __init__(self) -> None:
        super().__init__("Key is not in valid OpenSSH public key format")


class VolumeZoneMismatch(CodedError):
    code = "InvalidVolume.ZoneMismatch"

    def __init__(self, volume_id: str, instance_id: str) -> None:
        super().__init__(f"The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'")


class SnapshotInUse(CodedError):
    code = "InvalidSnapshot.InUse"

    def __init__(self, snapshot_id: str, user: str) -> None:
        super().__init__(f"The snapshot {snapshot_id} is currently in use by {user}")


class ImageUnavailable(CodedError):
    code = "InvalidAMIID.Unavailable"


class LaunchTemplateVersionNotFound(CodedError):
    code = "InvalidLaunchTemplateId.VersionNotFound"


# EC2's launch-template name codes end in "Exception", unlike every other EC2 code.
class LaunchTemplateNameNotFound(CodedError):
    code = "InvalidLaunchTemplateName.NotFoundException"

    def __init__(self) -> None:
        super().__init__("At least one of the launch templates specified in the request does not exist.")


class LaunchTemplateNameMalformed(CodedError):
    code = "InvalidLaunchTemplateName.MalformedException"


class LaunchTemplateNameExists(CodedError):
    code = "InvalidLaunchTemplateName.AlreadyExistsException"

    def __init__(self) -> None:
        super().__init__("Launch template name already in use.")


# --------------------------------------------------------------------------- KMS


class KmsError(CodedError):
    """A KMS error: the subclass names the code of the KMS model's error shape."""

    code = "KMSInternalException"


class KmsValidation(KmsError):
    """KMS's ``ValidationException`` raised by the engine (not the codec's model check:
    that is :class:`ValidationError`, which each protocol names its own way)."""

    code = "ValidationException"

    @classmethod
    def out_of_range(cls, value: Any, member: str, low: int, high: int) -> KmsValidation:
        """The message AWS gives for a number outside its member's range."""
        return cls(
            f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy "
            f"constraint: Member must have value between {low} and {high}"
        )


class KmsNotFound(KmsError):
    code = "NotFoundException"

    @classmethod
    def key(cls, arn: str) -> KmsNotFound:
        return cls(f"Key '{arn}' does not exist")

    @classmethod
    def alias(cls, alias_arn: str) -> KmsNotFound:
        return cls(f"Alias {alias_arn} is not found.")

    @classmethod
    def grant(cls, grant_id: str) -> KmsNotFound:
        return cls(f"Grant ID {grant_id} not found")


class KmsAccessDenied(KmsError):
    code = "AccessDeniedException"

    @classmethod
    def no_policy_allows(cls, principal_arn: str, key_arn: str, action: str) -> KmsAccessDenied:
        return cls(
            f"User: {principal_arn} is not authorized to perform: {action} on resource: "
            f"{key_arn} because no resource-based policy allows the {action} action."
        )


class KmsDisabled(KmsError):
    code = "DisabledException"


class KmsInvalidState(KmsError):
    code = "KMSInvalidStateException"


class KmsInternal(KmsError):
    code = "KMSInternalException"
    status = 500


class KmsInvalidKeyUsage(KmsError):
    code = "InvalidKeyUsageException"


class KmsUnsupported(KmsError):
    code = "UnsupportedOperationException"


class KmsDryRun(KmsError):
    code = "DryRunOperationException"

    def __init__(self) -> None:
        super().__init__("The request would have succeeded, but the DryRun flag is set.")


class KmsAlreadyExists(KmsError):
    code = "AlreadyExistsException"


class KmsInvalidCiphertext(KmsError):
    code = "InvalidCiphertextException"


class KmsIncorrectKey(KmsError):
    code = "IncorrectKeyException"


class KmsInvalidGrantToken(KmsError):
    code = "InvalidGrantTokenException"


class KmsInvalidGrantId(KmsError):
    code = "InvalidGrantIdException"


class KmsMalformedPolicy(KmsError):
    code = "MalformedPolicyDocumentException"


class KmsTag(KmsError):
    code = "TagException"


class KmsLimitExceeded(KmsError):
    code = "LimitExceededException"


class KmsInvalidMarker(KmsError):
    code = "InvalidMarkerException"


class KmsInvalidSignature(KmsError):
    code = "KMSInvalidSignatureException"


class KmsInvalidMac(KmsError):
    code = "KMSInvalidMacException"


class KmsCustomKeyStoreNotFound(KmsError):
    code = "CustomKeyStoreNotFoundException"


class KmsKeyUnavailable(KmsError):
    """The root-key store (HSM) cannot be reached: the caller may retry."""

    code = "KeyUnavailableException"
    status = 500

    def __init__(self, cause: object) -> None:
        super().__init__(f"The key store is unavailable; you can retry the request. ({cause})")


class KmsNotAuthorized(KmsError):
    code = "NotAuthorizedException"


# --------------------------------------------------------------------------- EBS direct APIs


class EbsError(CodedError):
    """An EBS direct-API error: a code of the ``ebs`` model and, for most, a ``Reason``."""

    code = "InternalServerException"
    status = 500

    def __init__(self, message: str, reason: str | None = None) -> None:
        fields = {"Reason": reason} if reason else {}
        super().__init__(message, **fields)
        self.reason = reason


class EbsValidation(EbsError):
    code = "ValidationException"
    status = 400


class EbsNotFound(EbsError):
    """``ResourceNotFoundException`` for a snapshot (404, ``SNAPSHOT_NOT_FOUND``)."""

    code = "ResourceNotFoundException"
    status = 404

    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"The snapshot '{snapshot_id}' does not exist.", "SNAPSHOT_NOT_FOUND")
        self.snapshot_id = snapshot_id


class EbsAccessDenied(EbsError):
    code = "AccessDeniedException"
    status = 403

    def __init__(self, message: str, reason: str = "UNAUTHORIZED_ACCOUNT") -> None:
        super().__init__(message, reason)


class EbsInternal(EbsError):
    code = "InternalServerException"
    status = 500


class EbsThrottled(EbsError):
    code = "RequestThrottledException"
    status = 400
