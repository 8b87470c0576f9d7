"""API errors as Kubernetes Status objects (reference/kubectl-api.md section 5)."""

from __future__ import annotations

import json

import pytest

from appliance import errors
from appliance.errors import ApiError, Cause

GROUP = "vmoperator.vmware.com"


def test_status_shape_of_not_found() -> None:
    err = errors.not_found("virtualmachines", GROUP, "nope")
    assert err.code == 404
    assert err.to_status() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'virtualmachines.vmoperator.vmware.com "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": GROUP, "kind": "virtualmachines"},
        "code": 404,
    }


def test_not_found_in_the_core_group() -> None:
    status = errors.not_found("configmaps", "", "c").to_status()
    assert status["message"] == 'configmaps "c" not found'
    assert status["details"] == {"name": "c", "group": "", "kind": "configmaps"}


def test_api_error_is_an_exception_with_its_message() -> None:
    err = errors.not_found("configmaps", "", "c")
    assert isinstance(err, Exception)
    assert str(err) == 'configmaps "c" not found'
    with pytest.raises(ApiError) as exc:
        raise err
    assert exc.value.reason == "NotFound"


def test_status_without_details_has_no_details_key() -> None:
    status = errors.bad_request("bad selector").to_status()
    assert status == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": "bad selector", "reason": "BadRequest",
                      "code": 400}


def test_status_is_json_serialisable() -> None:
    err = errors.invalid("VirtualMachine", GROUP, "vm", [Cause("spec.x", "Required value",
                                                               "FieldValueRequired")])
    assert json.loads(json.dumps(err.to_status())) == err.to_status()


def test_already_exists() -> None:
    err = errors.already_exists("virtualmachines", GROUP, "vm1")
    assert (err.code, err.reason) == (409, "AlreadyExists")
    assert err.message == 'virtualmachines.vmoperator.vmware.com "vm1" already exists'
    assert err.details == {"name": "vm1", "group": GROUP, "kind": "virtualmachines"}


def test_conflict_default_and_custom_reason() -> None:
    err = errors.conflict("virtualmachines", GROUP, "x")
    assert (err.code, err.reason) == (409, "Conflict")
    assert err.message == (
        'Operation cannot be fulfilled on virtualmachines.vmoperator.vmware.com "x": the '
        "object has been modified; please apply your changes to the latest version and try "
        "again")
    custom = errors.conflict("namespaces", "", "dev", "the namespace is being terminated")
    assert custom.message == ('Operation cannot be fulfilled on namespaces "dev": '
                              "the namespace is being terminated")


def test_invalid_with_one_cause() -> None:
    err = errors.invalid("VirtualMachine", GROUP, "vm1",
                         [Cause("spec.className", "Required value", "FieldValueRequired")])
    assert (err.code, err.reason) == (422, "Invalid")
    assert err.message == ('VirtualMachine.vmoperator.vmware.com "vm1" is invalid: '
                           "spec.className: Required value")
    assert err.to_status()["details"] == {
        "name": "vm1", "group": GROUP, "kind": "VirtualMachine",
        "causes": [{"reason": "FieldValueRequired", "message": "Required value",
                    "field": "spec.className"}],
    }


def test_invalid_with_several_causes_in_the_core_group() -> None:
    causes = [Cause("data[b]", "Invalid value: <hidden>: illegal base64 data"),
              Cause("spec.hard[x]", "Invalid value: 'x': must be a standard resource"),
              Cause("", "a message without a field")]
    err = errors.invalid("Secret", "", "s", causes)
    assert err.message == (
        'Secret "s" is invalid: [data[b]: Invalid value: <hidden>: illegal base64 data, '
        "spec.hard[x]: Invalid value: 'x': must be a standard resource, "
        "a message without a field]")
    details = err.to_status()["details"]
    assert details["kind"] == "Secret"
    assert details["group"] == ""
    assert [c["field"] for c in details["causes"]] == ["data[b]", "spec.hard[x]", ""]
    assert [c["reason"] for c in details["causes"]] == ["FieldValueInvalid"] * 3


def test_cause_to_dict() -> None:
    assert Cause("metadata.name", "Invalid value").to_dict() == {
        "reason": "FieldValueInvalid", "message": "Invalid value", "field": "metadata.name"}


def test_unsupported_media_type_message_is_exactly_kube_apiservers() -> None:
    err = errors.unsupported_media_type("application/strategic-merge-patch+json")
    assert (err.code, err.reason) == (415, "UnsupportedMediaType")
    assert err.message == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, "
        "application/apply-patch+yaml")
    assert err.to_status()["code"] == 415


@pytest.mark.parametrize(("err", "code", "reason"), [
    (errors.bad_request("x"), 400, "BadRequest"),
    (errors.unauthorized(), 401, "Unauthorized"),
    (errors.forbidden("x"), 403, "Forbidden"),
    (errors.method_not_allowed("x"), 405, "MethodNotAllowed"),
    (errors.gone("x"), 410, "Expired"),
    (errors.too_large(10), 413, "RequestEntityTooLarge"),
    (errors.internal("x"), 500, "InternalError"),
])
def test_codes_and_reasons(err: ApiError, code: int, reason: str) -> None:
    assert (err.code, err.reason) == (code, reason)
    status = err.to_status()
    assert (status["code"], status["reason"], status["status"]) == (code, reason, "Failure")


def test_unauthorized_default_message() -> None:
    assert errors.unauthorized().message == "Unauthorized"
    assert errors.unauthorized("token expired").message == "token expired"


def test_forbidden_details() -> None:
    message = ('virtualmachines.vmoperator.vmware.com "vm1" is forbidden: User "bob" cannot '
               'get resource "virtualmachines" in API group "vmoperator.vmware.com" in the '
               'namespace "dev"')
    named = errors.forbidden(message, "virtualmachines", GROUP, "vm1")
    assert named.message == message
    assert named.details == {"name": "vm1", "group": GROUP, "kind": "virtualmachines"}
    unnamed = errors.forbidden("no", "virtualmachines", GROUP)
    assert unnamed.details == {"group": GROUP, "kind": "virtualmachines"}
    assert "details" not in errors.forbidden("no").to_status()


def test_gone_and_internal_messages() -> None:
    assert errors.gone("too old resource version: 5 (100)").message == \
        "too old resource version: 5 (100)"
    assert errors.internal("boom").message == "Internal error occurred: boom"
    assert "10" in errors.too_large(10).message


def test_headers_default_empty_and_independent() -> None:
    a = errors.bad_request("a")
    b = errors.bad_request("b")
    a.headers["Retry-After"] = "1"
    assert b.headers == {}
    assert "headers" not in a.to_status()


def test_success_status() -> None:
    assert errors.success_status("vm1", GROUP, "virtualmachines", "u-1") == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": "vm1", "group": GROUP, "kind": "virtualmachines", "uid": "u-1"}}
