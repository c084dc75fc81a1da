#!/usr/bin/python3
"""Interop client: gRPC C-core (Debian's python3-grpcio) against a running connections service.

A client stack that nobody on this project wrote, so that the service is checked against what a
real third-party gRPC implementation sends and expects, not only against our own assumptions.
test/interop/grpc-core.test.ts starts the service, generates the message classes from proto/ with
`protoc --python_out` into a temporary directory, and runs one scenario per invocation:

    /usr/bin/python3 grpc_core_client.py SCENARIO --target 127.0.0.1:PORT --generated DIR

It prints one JSON object on stdout: {"scenario", "ok", "error", "observed"}. "observed" holds
what the scenario saw (codes, reasons, counts) for the test to assert on; "error" holds the failed
check or the traceback. The exit status is 0 when the scenario ran to the end, 1 otherwise.

No service stubs (Debian's grpc-tools is too old): every method is called through
channel.unary_unary / unary_stream / stream_stream with the generated serializers.
"""

import argparse
import importlib.util
import json
import os
import secrets
import sys
import threading
import time
import traceback

import grpc
from google.protobuf import descriptor_pb2

ALL_SCOPES = ["account.read", "inquiry.read", "transaction.read", "verification.read"]
ERROR_DOMAIN = "connections.v1"


class CheckFailed(Exception):
    """A scenario saw something other than what the service promises."""


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def unique(prefix):
    return "%s_%s" % (prefix, secrets.token_hex(5))


# --------------------------------------------------------------------------------------------
# Generated code.


class Protos:
    """The message classes that protoc generated from proto/ into `directory`."""

    def __init__(self, directory):
        sys.path.insert(0, directory)
        # The installed grpc package shadows the generated grpc/ folder, so grpc.health.v1 cannot
        # be imported by name; these two modules import nothing generated, so load them by file.
        self.health = load_module("interop_health_pb2", directory, "grpc/health/v1/health_pb2.py")
        self.reflection = load_module("interop_reflection_pb2", directory, "grpc/reflection/v1/reflection_pb2.py")
        from connections.v1 import connection_pb2, connection_service_pb2, organization_service_pb2
        from google.rpc import error_details_pb2, status_pb2

        self.connection = connection_pb2
        self.connection_service = connection_service_pb2
        self.organization_service = organization_service_pb2
        self.status = status_pb2
        self.error_details = error_details_pb2

    def services(self):
        return [
            self.connection_service.DESCRIPTOR.services_by_name["ConnectionService"],
            self.organization_service.DESCRIPTOR.services_by_name["OrganizationService"],
        ]


def load_module(name, directory, relative_path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(directory, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def message_class(descriptor):
    from google.protobuf import symbol_database

    return symbol_database.Default().GetSymbol(descriptor.full_name)


# --------------------------------------------------------------------------------------------
# Calling the service.


class Failure:
    """A failed call as the client saw it, with the google.rpc.ErrorInfo from grpc-status-details-bin."""

    def __init__(self, protos, error):
        self.code = error.code().name
        self.message = error.details() or ""
        self.trailers = dict(metadata_items(error.trailing_metadata()))
        self.initial = dict(metadata_items(error.initial_metadata()))
        self.reason = ""
        self.domain = ""
        self.metadata = {}
        self.status_code = None
        self.status_message = None
        details = self.trailers.get("grpc-status-details-bin")
        if details is not None:
            status = protos.status.Status.FromString(details)
            self.status_code = status.code
            self.status_message = status.message
            for detail in status.details:
                if detail.Is(protos.error_details.ErrorInfo.DESCRIPTOR):
                    info = protos.error_details.ErrorInfo()
                    detail.Unpack(info)
                    self.reason = info.reason
                    self.domain = info.domain
                    self.metadata = dict(info.metadata)

    def observed(self):
        return {
            "code": self.code,
            "reason": self.reason,
            "domain": self.domain,
            "metadata": self.metadata,
            "message": self.message,
            "statusDetailsCode": self.status_code,
            "statusDetailsMessage": self.status_message,
            "requestId": self.trailers.get("x-request-id") or self.initial.get("x-request-id"),
        }


def metadata_items(metadata):
    return [(item.key, item.value) for item in (metadata or [])]


def headers(caller, organization=None, actor=None, request_id=None):
    """Request metadata: a dev-mode bearer token for `caller` (None sends none) and the optional headers."""
    items = []
    if caller is not None:
        items.append(("authorization", "Bearer dev-" + caller))
    if organization is not None:
        items.append(("x-organization-id", organization))
    if actor is not None:
        items.append(("x-actor", actor))
    if request_id is not None:
        items.append(("x-request-id", request_id))
    return items


class Client:
    """Every RPC of both services on one channel, by method name ("CreateConnection")."""

    def __init__(self, protos, channel):
        self.protos = protos
        self.channel = channel
        self.methods = {}
        self.streaming = set()
        for service in protos.services():
            for method in service.methods:
                shape = descriptor_pb2.MethodDescriptorProto()
                method.CopyToProto(shape)
                # WatchConnectionEvents streams its answers; every other method is unary.
                open_call = channel.unary_stream if shape.server_streaming else channel.unary_unary
                if shape.server_streaming:
                    self.streaming.add(method.name)
                self.methods[method.name] = (
                    open_call(
                        "/%s/%s" % (service.full_name, method.name),
                        request_serializer=message_class(method.input_type).SerializeToString,
                        response_deserializer=message_class(method.output_type).FromString,
                    ),
                    message_class(method.input_type),
                )

    def call(self, rpc, fields, caller, organization=None, timeout=20, **options):
        """Returns (response, call); raises grpc.RpcError."""
        multi_callable, request_class = self.methods[rpc]
        metadata = headers(caller, organization, options.pop("actor", None), options.pop("request_id", None))
        return multi_callable.with_call(request_class(**fields), metadata=metadata, timeout=timeout, **options)

    def stream(self, rpc, fields, caller, organization=None, timeout=20):
        """A server-streaming call: an iterator of responses that is also the call (cancel())."""
        multi_callable, request_class = self.methods[rpc]
        return multi_callable(request_class(**fields), metadata=headers(caller, organization), timeout=timeout)

    def ok(self, rpc, fields, caller, organization=None, **options):
        try:
            return self.call(rpc, fields, caller, organization, **options)[0]
        except grpc.RpcError as error:
            failure = Failure(self.protos, error)
            raise CheckFailed("%s failed: %s %s %s" % (rpc, failure.code, failure.reason, failure.message))

    def fail(self, rpc, fields, caller, organization=None, **options):
        try:
            if rpc in self.streaming:
                next(self.stream(rpc, fields, caller, organization))
            else:
                self.call(rpc, fields, caller, organization, **options)
        except grpc.RpcError as error:
            return Failure(self.protos, error)
        raise CheckFailed("%s succeeded where it should have failed" % rpc)

    def future(self, rpc, fields, caller, organization=None, timeout=120):
        multi_callable, request_class = self.methods[rpc]
        return multi_callable.future(request_class(**fields), metadata=headers(caller, organization), timeout=timeout)

    def many(self, rpc, requests, caller, organization=None, in_flight=50):
        """Calls `rpc` once per fields dict, `in_flight` at a time (set-up, not load); returns the responses."""
        responses = []
        for start in range(0, len(requests), in_flight):
            batch = [self.future(rpc, fields, caller, organization) for fields in requests[start : start + in_flight]]
            responses.extend(future.result() for future in batch)
        return responses

    def organizations(self, count, prefix="org"):
        ids = [unique(prefix) for _ in range(count)]
        self.many("CreateOrganization", [{"id": id, "name": "Organization " + id} for id in ids], "provisioning")
        return ids

    def hub(self, connections, prefix, name):
        """A new organization that is the source of `connections` Connections named `name`.

        Returns its id and the Connections' ids."""
        (hub,) = self.organizations(1, prefix)
        others = self.organizations(connections, prefix + "_peer")
        requests = [{"destination_organization_id": other, "scopes": ALL_SCOPES, "name": name} for other in others]
        return hub, [response.connection.id for response in self.many("CreateConnection", requests, "api-gateway", hub)]

    def pages_ahead(self, hub, count=10):
        """Large ListConnections calls in flight, which the service answers before anything sent after them."""
        return [self.future("ListConnections", {"page_size": 500}, "api-gateway", hub) for _ in range(count)]


# --------------------------------------------------------------------------------------------
# Scenarios. Each gets (protos, args) and returns what it observed; a failed check raises.


def scenario_rpcs(protos, args):
    """Every RPC of both services succeeds, in the order a Connection's life calls them."""
    client = Client(protos, grpc.insecure_channel(args.target))
    State = protos.connection.Connection.State
    called = []

    def ok(rpc, fields, caller, organization=None, **options):
        response = client.ok(rpc, fields, caller, organization, **options)
        called.append(rpc)
        return response

    source, destination = unique("org_src"), unique("org_dst")
    created = ok("CreateOrganization", {"id": source, "name": "Source"}, "provisioning").organization
    check(created.id == source and created.create_time.seconds > 0, "CreateOrganization returns the organization")
    ok("CreateOrganization", {"name": "Destination", "id": destination}, "provisioning")
    fetched = ok("GetOrganization", {"id": destination}, "provisioning").organization
    check(fetched.name == "Destination", "GetOrganization returns what was registered")

    connection = ok(
        "CreateConnection",
        {"destination_organization_id": destination, "scopes": ["transaction.read", "account.read"], "name": "Payroll"},
        "api-gateway",
        source,
    ).connection
    check(connection.id.startswith("cxn_"), "a Connection id starts with cxn_")
    check(connection.state == State.STATE_PENDING, "a new Connection is PENDING")
    check(list(connection.scopes) == ["account.read", "transaction.read"], "scopes are kept sorted")
    got = ok("GetConnection", {"id": connection.id}, "token-service", destination).connection
    check(got.id == connection.id and got.etag == connection.etag, "GetConnection returns the Connection")
    listed = ok("ListConnections", {"page_size": 10}, "dashboard-bff", destination)
    check([c.id for c in listed.connections] == [connection.id], "ListConnections lists it for the destination")
    check(listed.next_page_token == "", "a single page has no next_page_token")
    activated = ok("ActivateConnection", {"id": connection.id, "etag": got.etag}, "dashboard-bff", destination)
    check(activated.connection.state == State.STATE_ACTIVE, "ActivateConnection makes it ACTIVE")
    Action = protos.connection_service.CheckConnectionRequest.Action
    Reason = protos.connection_service.CheckConnectionResponse.Reason
    allowed = ok(
        "CheckConnection",
        {
            "connection_id": connection.id,
            "organization_id": source,
            "action": Action.ACTION_ISSUE_SHARE_TOKEN,
            "scope": "account.read",
        },
        "token-service",
    )
    check(allowed.allowed and allowed.reason == Reason.REASON_ALLOWED, "CheckConnection allows an ACTIVE scope")
    batch = ok(
        "BatchCheckConnection",
        {
            "checks": [
                {"connection_id": connection.id, "organization_id": source, "action": Action.ACTION_ISSUE_SHARE_TOKEN, "scope": scope}
                for scope in ("account.read", "inquiry.read")
            ]
        },
        "token-service",
    )
    check(
        [result.reason for result in batch.results] == [Reason.REASON_ALLOWED, Reason.REASON_SCOPE_NOT_GRANTED],
        "BatchCheckConnection answers each check in order",
    )
    deactivated = ok(
        "DeactivateConnection", {"id": connection.id, "reason": "contract ended"}, "dashboard-bff", source
    ).connection
    check(deactivated.state == State.STATE_INACTIVE, "DeactivateConnection makes it INACTIVE")
    check(deactivated.deactivate_time.seconds > 0, "deactivate_time is set")
    reactivated = ok("ReactivateConnection", {"id": connection.id}, "api-gateway", source).connection
    check(reactivated.state == State.STATE_PENDING, "ReactivateConnection makes it PENDING again")
    updated = ok(
        "UpdateConnection",
        {"connection": {"id": connection.id, "scopes": ["account.read"]}, "update_mask": {"paths": ["scopes"]}},
        "api-gateway",
        source,
    ).connection
    check(list(updated.scopes) == ["account.read"], "UpdateConnection narrows the scopes")
    events = ok("ListConnectionEvents", {"connection_id": connection.id}, "api-gateway", destination).events
    Type = protos.connection.ConnectionEvent.Type
    types = [Type.Name(event.type) for event in events]
    check(
        types == ["TYPE_CREATED", "TYPE_ACTIVATED", "TYPE_DEACTIVATED", "TYPE_REACTIVATED", "TYPE_UPDATED"],
        "ListConnectionEvents lists every transition oldest first, got %s" % types,
    )
    check(events[2].reason == "contract ended", "the deactivation reason is kept on the event")
    # The change feed from its first event, as the token service follows it: this Connection's
    # events arrive in the order they were recorded, each carrying its parties and scopes.
    feed = client.stream("WatchConnectionEvents", {}, "token-service")
    followed = []
    for message in feed:
        check(message.cursor != "", "every feed message carries a cursor")
        followed.extend(event for event in message.events if event.connection_id == connection.id)
        if len(followed) >= len(events):
            break
    feed.cancel()
    called.append("WatchConnectionEvents")
    check([e.id for e in followed] == [e.id for e in events], "the feed delivers the Connection's events in order")
    check(followed[-1].source_organization_id == source, "feed events carry the source")
    check(list(followed[-1].previous_scopes) == ["account.read", "transaction.read"], "TYPE_UPDATED has previous_scopes")
    return {"succeeded": called, "eventTypes": types}


def scenario_errors(protos, args):
    """Each RPC fails with a gRPC code and a google.rpc.ErrorInfo in grpc-status-details-bin."""
    client = Client(protos, grpc.insecure_channel(args.target))
    source, destination, stranger = client.organizations(3, "org_err")
    connection = client.ok(
        "CreateConnection",
        {"destination_organization_id": destination, "scopes": ["account.read"], "name": "Errors"},
        "dashboard-bff",
        source,
    ).connection
    cases = []

    def case(rpc, expected, fields, caller, organization=None, **options):
        failure = client.fail(rpc, fields, caller, organization, **options)
        cases.append({"rpc": rpc, "expected": expected, "observed": failure.observed()})

    def expect(code, reason, **metadata):
        return {"code": code, "reason": reason, "domain": ERROR_DOMAIN, "metadata": metadata}

    case("CreateOrganization", expect("ALREADY_EXISTS", "ORGANIZATION_ALREADY_EXISTS"), {"id": source, "name": "Again"}, "provisioning")
    case("GetOrganization", expect("NOT_FOUND", "ORGANIZATION_NOT_FOUND"), {"id": unique("org_none")}, "provisioning")
    case(
        "CreateConnection",
        expect("INVALID_ARGUMENT", "SELF_CONNECTION"),
        {"destination_organization_id": source, "scopes": ["account.read"], "name": "Self"},
        "api-gateway",
        source,
    )
    case(
        "CreateConnection",
        expect("ALREADY_EXISTS", "CONNECTION_ALREADY_EXISTS", connection_id=connection.id),
        {"destination_organization_id": destination, "scopes": ["account.read"], "name": "Twice"},
        "api-gateway",
        source,
    )
    case("GetConnection", expect("NOT_FOUND", "CONNECTION_NOT_FOUND"), {"id": connection.id}, "api-gateway", stranger)
    case("ListConnections", expect("INVALID_ARGUMENT", "INVALID_ARGUMENT", field="page_size"), {"page_size": -1}, "api-gateway", source)
    case("ListConnections", expect("INVALID_ARGUMENT", "ORGANIZATION_HEADER_REQUIRED"), {}, "api-gateway")
    case("ListConnections", expect("PERMISSION_DENIED", "ORGANIZATION_NOT_REGISTERED"), {}, "api-gateway", unique("org_none"))
    case("ActivateConnection", expect("PERMISSION_DENIED", "CALLER_NOT_ALLOWED"), {"id": connection.id}, "api-gateway", destination)
    case("ActivateConnection", expect("PERMISSION_DENIED", "ONLY_DESTINATION_CAN_ACTIVATE"), {"id": connection.id}, "dashboard-bff", source)
    case("DeactivateConnection", expect("ABORTED", "ETAG_MISMATCH"), {"id": connection.id, "etag": "stale"}, "api-gateway", source)
    case(
        "ReactivateConnection",
        expect("FAILED_PRECONDITION", "INVALID_STATE_TRANSITION", state="STATE_PENDING"),
        {"id": connection.id},
        "api-gateway",
        source,
    )
    case("ListConnectionEvents", expect("NOT_FOUND", "CONNECTION_NOT_FOUND"), {"connection_id": connection.id}, "api-gateway", stranger)
    case(
        "UpdateConnection",
        expect("PERMISSION_DENIED", "ONLY_SOURCE_CAN_UPDATE"),
        {"connection": {"id": connection.id, "name": "Mine"}, "update_mask": {"paths": ["name"]}},
        "api-gateway",
        destination,
    )
    case("BatchCheckConnection", expect("INVALID_ARGUMENT", "INVALID_ARGUMENT", field="checks"), {"checks": []}, "token-service")
    case(
        "WatchConnectionEvents",
        expect("INVALID_ARGUMENT", "INVALID_ARGUMENT", field="start_after"),
        {"start_after": "not-a-cursor"},
        "token-service",
    )
    case(
        "CheckConnection",
        expect("UNAUTHENTICATED", "CALLER_UNAUTHENTICATED"),
        {"connection_id": connection.id, "organization_id": source, "action": 1, "scope": "account.read"},
        None,
    )
    case(
        "CheckConnection",
        expect("INVALID_ARGUMENT", "UNKNOWN_SCOPE"),
        {"connection_id": connection.id, "organization_id": source, "action": 1, "scope": "salary.read"},
        "token-service",
    )
    return {"cases": cases}


def scenario_gzip(protos, args):
    """gzip-compressed requests (per call, and as the channel's default) are read, and answers decode.

    C-core sends a message uncompressed when gzip would make it larger, so every request here is
    long and repetitive enough to compress (the test counts compressed messages on the wire).
    """
    observed = {}
    name = ("compressible " * 16)[:200]
    for label in ("call", "channel"):
        channel_options = [("grpc.default_compression_algorithm", grpc.Compression.Gzip)] if label == "channel" else []
        client = Client(protos, grpc.insecure_channel(args.target, options=channel_options))
        compression = {"compression": grpc.Compression.Gzip} if label == "call" else {}
        source, destination = (unique("org_gzip_" + "x" * 40) for _ in range(2))
        for org in (source, destination):
            client.ok("CreateOrganization", {"id": org, "name": name}, "provisioning", **compression)
        created = client.ok(
            "CreateConnection",
            {"destination_organization_id": destination, "scopes": ALL_SCOPES, "name": name},
            "api-gateway",
            source,
            **compression,
        ).connection
        check(created.name == name and created.destination_organization_id == destination, "the request arrived intact")
        listed = client.ok("ListConnections", {"page_size": 500}, "api-gateway", source, **compression)
        check([c.id for c in listed.connections] == [created.id], "the answer to a gzip call decodes")
        failure = client.fail("GetConnection", {"id": "cxn_" + "z" * 60}, "api-gateway", source, **compression)
        check(failure.reason == "CONNECTION_NOT_FOUND", "errors on gzip calls carry ErrorInfo, got %r" % failure.reason)
        observed[label] = {"listed": len(listed.connections), "errorReason": failure.reason}
    # Reflection is served by connect-node, which gzips answers above 1 KiB for a client that
    # accepts gzip, as C-core says it does: so C-core decompresses an answer here too.
    question = protos.reflection.ServerReflectionRequest(file_by_filename="connections/v1/connection.proto")
    (answer,) = reflect(protos, client.channel, [question])
    observed["reflection"] = {"files": len(answer.file_descriptor_response.file_descriptor_proto)}
    return observed


def scenario_deadline(protos, args):
    """A tiny timeout ends in DEADLINE_EXCEEDED, on a unary call and on a stream; a normal one succeeds.

    The tiny-timeout call waits on the service behind a few large pages on the same channel, so it
    cannot be answered within its 1 ms however the machine's timers run.
    """
    channel = grpc.insecure_channel(args.target)
    client = Client(protos, channel)
    hub, _ = client.hub(100, "org_dl", "deadline")
    ahead = client.pages_ahead(hub)
    tiny = client.fail("ListConnections", {"page_size": 500}, "api-gateway", hub, timeout=0.001)
    check(tiny.code == "DEADLINE_EXCEEDED", "a 1 ms timeout gives DEADLINE_EXCEEDED, got %s" % tiny.code)
    for future in ahead:
        check(len(future.result().connections) == 100, "the calls with a normal timeout are answered")
    try:
        for _ in health_watch(protos, channel, "", timeout=0.3):
            pass
        stream = "OK"
    except grpc.RpcError as error:
        stream = error.code().name
    check(stream == "DEADLINE_EXCEEDED", "a Watch stream with a 300 ms timeout ends DEADLINE_EXCEEDED, got %s" % stream)
    response = client.ok("GetOrganization", {"id": hub}, "provisioning", timeout=10)
    check(response.organization.id == hub, "a call with a 10 s timeout succeeds")
    return {"tiny": tiny.code, "stream": stream}


def scenario_cancel(protos, args):
    """future.cancel() cancels a unary call and a stream; the other calls and the channel go on.

    The cancelled call waits on the service behind a few large pages, so it is still in flight
    when it is cancelled however fast the machine is.
    """
    channel = grpc.insecure_channel(args.target)
    client = Client(protos, channel)
    org, _ = client.hub(100, "org_cx", "cancel")
    ahead = client.pages_ahead(org)
    future = client.future("ListConnections", {"page_size": 500}, "api-gateway", org)
    cancelled = future.cancel()
    check(cancelled and future.cancelled(), "a call in flight can be cancelled")
    try:
        future.result()
        raise CheckFailed("a cancelled call returned a result")
    except grpc.FutureCancelledError:
        pass
    for other in ahead:
        check(len(other.result().connections) == 100, "the other calls on the channel are answered")
    watch = health_watch(protos, channel, "")
    first = next(watch)
    watch.cancel()
    try:
        next(watch)
        raise CheckFailed("a cancelled Watch stream went on")
    except grpc.RpcError as error:
        stream_code = error.code().name
    check(stream_code == "CANCELLED", "a cancelled stream ends CANCELLED, got %s" % stream_code)
    after = client.ok("GetOrganization", {"id": org}, "provisioning")
    check(after.organization.id == org, "the channel serves calls after the cancellations")
    return {
        "unaryCancelled": cancelled,
        "watchFirstStatus": protos.health.HealthCheckResponse.ServingStatus.Name(first.status),
        "watchEnded": stream_code,
    }


def scenario_metadata(protos, args):
    """x-request-id is echoed (or generated); x-actor and x-organization-id reach the Connection."""
    client = Client(protos, grpc.insecure_channel(args.target))
    source, destination = client.organizations(2, "org_md")
    request_id = unique("req_interop")
    response, call = client.call(
        "CreateConnection",
        {"destination_organization_id": destination, "scopes": ["inquiry.read"], "name": "Metadata"},
        "api-gateway",
        source,
        actor="user:usr_interop",
        request_id=request_id,
    )
    initial = dict(metadata_items(call.initial_metadata()))
    _, generated = client.call("GetOrganization", {"id": source}, "provisioning")
    generated_id = dict(metadata_items(generated.initial_metadata())).get("x-request-id", "")
    failure = client.fail("GetConnection", {"id": "cxn_none"}, "api-gateway", source, request_id=request_id + "_err")
    events = client.ok("ListConnectionEvents", {"connection_id": response.connection.id}, "api-gateway", source).events
    return {
        "echoedRequestId": initial.get("x-request-id"),
        "sentRequestId": request_id,
        "generatedRequestId": generated_id,
        "errorRequestId": failure.observed()["requestId"],
        "sentErrorRequestId": request_id + "_err",
        "creator": response.connection.creator,
        "source": response.connection.source_organization_id,
        "expectedSource": source,
        "eventActor": events[0].actor if events else None,
        "eventRequestId": events[0].request_id if events else None,
        "eventActorOrganization": events[0].actor_organization_id if events else None,
    }


def scenario_concurrency(protos, args):
    """Hundreds of concurrent calls on ONE channel, most of them large pages: every one succeeds."""
    channel = grpc.insecure_channel(args.target, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    client = Client(protos, channel)
    started = time.monotonic()
    hub, ids = client.hub(args.connections, "org_hub", ("Shared ledger with the hub organization " * 5)[:200])
    setup_seconds = time.monotonic() - started

    # A second client that pings every second and gives a connection up when a PING goes
    # unanswered for 10 s, watching health the whole time: the load must not starve it.
    watcher = grpc.insecure_channel(args.target, options=keepalive_options(1_000))
    watcher_states = []
    watcher.subscribe(lambda state: watcher_states.append(state.name), try_to_connect=True)
    watch = health_watch(protos, watcher, "", timeout=args.calls_timeout + 60)
    statuses = [protos.health.HealthCheckResponse.ServingStatus.Name(next(watch).status)]
    watch_ended = []

    def follow_watch():
        try:
            for response in watch:
                statuses.append(protos.health.HealthCheckResponse.ServingStatus.Name(response.status))
        except grpc.RpcError as error:
            watch_ended.append(error.code().name)

    follower = threading.Thread(target=follow_watch, daemon=True)
    follower.start()

    started = time.monotonic()
    failures = {}
    sizes = []
    expected_ids = set(ids)
    in_flight = set()
    lock = threading.Lock()
    all_settled = threading.Event()

    def failed(what):
        failures[what] = failures.get(what, 0) + 1

    def settle(kind, future):
        # Runs as each call completes, so that no more than the pages still in flight are held.
        try:
            response = future.result()
            error = None
        except grpc.RpcError as rpc_error:
            response, error = None, "%s: %s" % (rpc_error.code().name, rpc_error.details())
        with lock:
            in_flight.discard(future)
            if error is not None:
                failed(error)
            elif kind == "small":
                if response.connection.source_organization_id != hub:
                    failed("GetConnection answered another Connection")
            else:
                sizes.append(response.ByteSize())
                if {c.id for c in response.connections} != expected_ids:
                    failed("a page that is not the organization's %d Connections" % len(expected_ids))
            if not in_flight and issued[0] == total:
                all_settled.set()

    # The small calls are spread among the large ones, all in flight at once.
    total = args.large_calls + args.small_calls
    small_every = max(1, total // max(1, args.small_calls))
    large_left, small_left = args.large_calls, args.small_calls
    issued = [0]
    while large_left or small_left:
        if small_left and (not large_left or issued[0] % small_every == 0):
            small_left -= 1
            kind, future = "small", client.future("GetConnection", {"id": ids[issued[0] % len(ids)]}, "api-gateway", hub)
        else:
            large_left -= 1
            kind, future = "large", client.future("ListConnections", {"page_size": 500}, "api-gateway", hub)
        with lock:
            in_flight.add(future)
            issued[0] += 1
        future.add_done_callback(lambda done, kind=kind: settle(kind, done))
    check(all_settled.wait(args.calls_timeout), "calls still in flight after %d s" % args.calls_timeout)
    calls_seconds = time.monotonic() - started
    watch.cancel()
    follower.join(10)
    return {
        "connections": len(ids),
        "calls": total,
        "largeCalls": args.large_calls,
        "succeeded": total - sum(failures.values()),
        "failures": failures,
        "largestResponseBytes": max(sizes, default=0),
        "totalResponseBytes": sum(sizes),
        "setupSeconds": round(setup_seconds, 2),
        "callsSeconds": round(calls_seconds, 2),
        "watcher": {
            "connectivity": watcher_states,
            "leftReady": left_ready(watcher_states),
            "statuses": statuses,
            "ended": watch_ended[0] if watch_ended else None,
        },
    }


def scenario_keepalive(protos, args):
    """A client that sends keepalive pings is not sent away; its channel stays READY and serves calls."""
    channel = grpc.insecure_channel(args.target, options=keepalive_options(args.keepalive_ms))
    states = []
    channel.subscribe(lambda state: states.append(state.name), try_to_connect=True)
    client = Client(protos, channel)
    (org,) = client.organizations(1, "org_ka")
    # An open stream, as long-lived clients have, and idle stretches between unary calls.
    watch = health_watch(protos, channel, "")
    next(watch)
    calls = 0
    deadline = time.monotonic() + args.keepalive_seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        client.ok("GetOrganization", {"id": org}, "provisioning")
        calls += 1
    # Idle with no call at all, then one more call.
    watch.cancel()
    time.sleep(args.keepalive_ms / 1000 * 1.5)
    client.ok("GetOrganization", {"id": org}, "provisioning")
    return {"calls": calls + 1, "connectivity": states, "leftReady": left_ready(states)}


def keepalive_options(interval_ms):
    """Channel options of a client that pings every `interval_ms`, also with no call in flight and
    with no limit on pings between data frames, and gives the connection up when a PING goes
    unanswered for 10 s."""
    return [
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def left_ready(states):
    """The connectivity states a channel passed through after it was first READY."""
    after_ready = states[states.index("READY") :] if "READY" in states else states
    return [state for state in after_ready if state != "READY"]


def health_watch(protos, channel, service, timeout=60):
    """A grpc.health.v1 Watch stream: iterate it for the statuses, cancel() it to end it."""
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=protos.health.HealthCheckRequest.SerializeToString,
        response_deserializer=protos.health.HealthCheckResponse.FromString,
    )
    return watch(protos.health.HealthCheckRequest(service=service), timeout=timeout)


def scenario_health(protos, args):
    """grpc.health.v1 Check and Watch, without credentials."""
    channel = grpc.insecure_channel(args.target)
    health = protos.health
    Status = health.HealthCheckResponse.ServingStatus
    check_rpc = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health.HealthCheckRequest.SerializeToString,
        response_deserializer=health.HealthCheckResponse.FromString,
    )
    checked = {}
    for service in ("", "connections.v1.ConnectionService", "connections.v1.OrganizationService", "grpc.health.v1.Health"):
        checked[service] = Status.Name(check_rpc(health.HealthCheckRequest(service=service), timeout=10).status)
    try:
        check_rpc(health.HealthCheckRequest(service="no.such.Service"), timeout=10)
        unknown = "OK"
    except grpc.RpcError as error:
        unknown = error.code().name
    watched = {}
    for service in ("", "no.such.Service"):
        stream = health_watch(protos, channel, service)
        watched[service] = Status.Name(next(stream).status)
        stream.cancel()
    # The channel's own health checking (a service config's healthCheckConfig): C-core watches ""
    # on each connection it makes and sends calls over it only while that says SERVING.
    config = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
    checked_channel = grpc.insecure_channel(args.target, options=[("grpc.service_config", json.dumps(config))])
    grpc.channel_ready_future(checked_channel).result(timeout=10)
    through_checked = checked_channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health.HealthCheckRequest.SerializeToString,
        response_deserializer=health.HealthCheckResponse.FromString,
    )(health.HealthCheckRequest(service=""), timeout=10)
    return {
        "check": checked,
        "checkUnknown": unknown,
        "watchFirst": watched,
        "healthCheckedChannel": Status.Name(through_checked.status),
    }


def reflect(protos, channel, questions):
    """Asks every question on one ServerReflectionInfo stream; returns the answers."""
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=protos.reflection.ServerReflectionRequest.SerializeToString,
        response_deserializer=protos.reflection.ServerReflectionResponse.FromString,
    )
    return list(info(iter(questions), timeout=10))


def scenario_reflection(protos, args):
    """grpc.reflection.v1: list the services, fetch a file descriptor, and build a usable schema from it."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    reflection = protos.reflection
    questions = [
        reflection.ServerReflectionRequest(list_services=""),
        reflection.ServerReflectionRequest(file_containing_symbol="connections.v1.ConnectionService"),
        reflection.ServerReflectionRequest(file_by_filename="connections/v1/organization_service.proto"),
        reflection.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
    ]
    answers = reflect(protos, grpc.insecure_channel(args.target), questions)
    check(len(answers) == len(questions), "one answer per question, got %d" % len(answers))
    services = sorted(service.name for service in answers[0].list_services_response.service)

    # Build a fresh pool from what the server sent (dependencies may come in any order).
    pool = descriptor_pool.DescriptorPool()
    files = {}
    for answer in answers[1:3]:
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[file.name] = file
    added = set()

    def add(name):
        if name in added:
            return
        check(name in files, "the server sent %s without its dependency... %s" % (sorted(files), name))
        for dependency in files[name].dependency:
            add(dependency)
        pool.Add(files[name])
        added.add(name)

    for name in sorted(files):
        add(name)
    methods = {
        service: sorted(method.name for method in pool.FindServiceByName(service).methods)
        for service in ("connections.v1.ConnectionService", "connections.v1.OrganizationService")
    }
    generated = {service.full_name: sorted(m.name for m in service.methods) for service in protos.services()}
    return {
        "services": services,
        "files": sorted(files),
        "reflectedMethods": methods,
        "generatedMethods": generated,
        "unknownSymbol": answers[3].error_response.error_code,
    }


def scenario_replay(protos, args):
    """Every write carries a request_id, on a channel with the documented service config (retries on
    UNAVAILABLE), against a service that sends every connection away (GOAWAY) after a short age. Each
    write is sent again with its request_id after its connection was sent away, as a client does when
    it lost the answer: the replay answers the same bytes, and changes nothing."""
    options = [("grpc.service_config", args.service_config), ("grpc.enable_retries", 1)]
    client = Client(protos, grpc.insecure_channel(args.target, options=options))
    source, destination = client.organizations(2, "org_replay")
    crossing = 2.5 * args.connection_age_ms / 1000
    answers = {}

    def write_twice(rpc, fields, caller, organization=None):
        fields = dict(fields, request_id=unique("rid"))
        first = client.ok(rpc, fields, caller, organization)
        time.sleep(crossing)
        again = client.ok(rpc, fields, caller, organization)
        check(
            again.SerializeToString() == first.SerializeToString(),
            "%s replayed after a GOAWAY answered %s, first %s" % (rpc, again, first),
        )
        answers[rpc] = first
        return first

    created = write_twice(
        "CreateConnection",
        {"destination_organization_id": destination, "scopes": ["account.read", "inquiry.read"], "name": "Replayed"},
        "api-gateway",
        source,
    )
    cxn = created.connection.id
    write_twice("ActivateConnection", {"id": cxn}, "dashboard-bff", destination)
    write_twice(
        "UpdateConnection",
        {"connection": {"id": cxn, "scopes": ["account.read"]}, "update_mask": {"paths": ["scopes"]}},
        "api-gateway",
        source,
    )
    write_twice("DeactivateConnection", {"id": cxn, "reason": "replayed"}, "api-gateway", destination)
    write_twice("ReactivateConnection", {"id": cxn}, "api-gateway", source)
    write_twice("CreateOrganization", {"name": "Replayed organization"}, "provisioning")
    events = client.ok("ListConnectionEvents", {"connection_id": cxn}, "api-gateway", source).events
    return {
        "replayed": sorted(answers),
        "events": [protos.connection.ConnectionEvent.Type.Name(event.type) for event in events],
        "createdScopes": list(answers["CreateConnection"].connection.scopes),
    }


def scenario_rolling(protos, args):
    """Calls without retries (grpc.enable_retries 0) to every replica in --target
    (ipv4:host:port,host:port,...) as --service-config balances them, from several threads at once,
    until --stop-file exists, while the test restarts the replicas one after the other. Each thread
    creates an organization, reads it back, and checks a Connection that does not exist; what
    failed is counted by RPC, code, reason and message."""
    options = [("grpc.enable_retries", 0), ("grpc.service_config", args.service_config)]
    client = Client(protos, grpc.insecure_channel(args.target, options=options))
    Action = protos.connection_service.CheckConnectionRequest.Action
    lock = threading.Lock()
    calls = [0]
    failures = {}
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            organization = unique("org_rolling")
            for rpc, fields, caller in [
                ("CreateOrganization", {"id": organization, "name": "Rolling"}, "provisioning"),
                ("GetOrganization", {"id": organization}, "provisioning"),
                (
                    "CheckConnection",
                    {
                        "connection_id": "cxn_absent",
                        "organization_id": organization,
                        "action": Action.Value("ACTION_ISSUE_SHARE_TOKEN"),
                        "scope": "account.read",
                    },
                    "token-service",
                ),
            ]:
                try:
                    client.call(rpc, fields, caller, timeout=10)
                    error = None
                except grpc.RpcError as rpc_error:
                    failure = Failure(protos, rpc_error)
                    error = "%s %s: %s %s" % (rpc, failure.code, failure.reason, failure.message)
                with lock:
                    calls[0] += 1
                    if error is not None:
                        failures[error] = failures.get(error, 0) + 1
                if error is not None:
                    break

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.max_seconds
    while not os.path.exists(args.stop_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(15)
    check(os.path.exists(args.stop_file), "the test did not finish its restarts in %d s" % args.max_seconds)
    return {"calls": calls[0], "failures": failures}


SCENARIOS = {
    "rolling": scenario_rolling,
    "replay": scenario_replay,
    "rpcs": scenario_rpcs,
    "errors": scenario_errors,
    "gzip": scenario_gzip,
    "deadline": scenario_deadline,
    "cancel": scenario_cancel,
    "metadata": scenario_metadata,
    "concurrency": scenario_concurrency,
    "keepalive": scenario_keepalive,
    "health": scenario_health,
    "reflection": scenario_reflection,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--target", required=True, help="host:port of the service")
    parser.add_argument("--generated", required=True, help="where protoc --python_out wrote the message classes")
    parser.add_argument("--connections", type=int, default=500, help="concurrency: Connections of the one organization")
    parser.add_argument("--large-calls", type=int, default=500, help="concurrency: ListConnections(page_size=500) calls")
    parser.add_argument("--small-calls", type=int, default=150, help="concurrency: GetConnection calls among them")
    parser.add_argument("--calls-timeout", type=float, default=120, help="concurrency: seconds for every call to end")
    parser.add_argument("--keepalive-ms", type=int, default=1000, help="keepalive: grpc.keepalive_time_ms")
    parser.add_argument("--keepalive-seconds", type=float, default=3, help="keepalive: how long to keep calling")
    parser.add_argument("--service-config", default="{}", help="replay, rolling: the channel's service config (JSON)")
    parser.add_argument("--connection-age-ms", type=int, default=500, help="replay: the service's MAX_CONNECTION_AGE_MS")
    parser.add_argument("--threads", type=int, default=8, help="rolling: threads calling at once")
    parser.add_argument("--stop-file", help="rolling: calls go on until this file exists")
    parser.add_argument("--max-seconds", type=float, default=120, help="rolling: and at most this long")
    args = parser.parse_args()
    report = {"scenario": args.scenario, "grpc": grpc.__version__, "ok": False, "error": None, "observed": None}
    try:
        report["observed"] = SCENARIOS[args.scenario](Protos(args.generated), args)
        report["ok"] = True
    except CheckFailed as failure:
        report["error"] = str(failure)
    except Exception:  # noqa: BLE001 - the report carries any failure to the test
        report["error"] = traceback.format_exc()
    print(json.dumps(report))
    sys.stdout.flush()
    # grpc's threads may hold the interpreter open after a failure; the report is out, so leave.
    os._exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
