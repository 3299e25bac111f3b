"""OPC UA for the PLC (asyncua): the station's state, recipes, counters, last result and alarms, with methods
to pause, resume, change the recipe and reset the PLC's counters.

The address space borrows the structure and names of OPC 40100 (Machine Vision): a `VisionSystem` object with
a `VisionStateMachine`, `RecipeManagement` (its `PrepareRecipe` method) and `ResultManagement`. It does not
implement that specification's types or its full state machine. Nodes have string ids in the namespace
`urn:qc-inspect`, e.g. `ns=2;s=VisionSystem.ResultManagement.LastResult.PartId` (resolve the index by its URI).

Security: only Basic256Sha256 with Sign & Encrypt is offered, with a certificate the box makes on first start
(`opcua.pki_dir`/own). A client's certificate must be in `pki_dir`/trusted; an unknown one is refused and kept
in `pki_dir`/rejected for an administrator to move. A user name and password are needed (`opcua.users_file`,
or QC_OPCUA_USER / QC_OPCUA_PASSWORD); `opcua.anonymous` lets clients without one browse, read and subscribe,
never call a method.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.config import OpcUaConfig
from edge.plc import REASON_CODES, STATES, BesideServer, LineView, check_port
from edge.users import find_user, load_users
from firmware_io import VERSION

__all__ = ["NAMESPACE", "OpcUaServer", "load_opcua_users"]

NAMESPACE = "urn:qc-inspect"
USER_ENV, PASSWORD_ENV = "QC_OPCUA_USER", "QC_OPCUA_PASSWORD"
MAX_REJECTED = 100  # client certificates kept for review
V = ua.VariantType
_CALL_OR_WRITE = {ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary),
                  ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)}
_USER = {ua.NodeId(t) for t in USER_TYPES}
_CHECKS = (CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.URI | CertificateValidatorOptions.TRUSTED
           | CertificateValidatorOptions.PEER_CLIENT)


def load_opcua_users(path: Path | None) -> dict[str, str]:
    return load_users(path, "opcua.users_file", PASSWORD_ENV, os.environ.get(USER_ENV) or "plc")


class _Users:
    """asyncua's user manager: a user by name and password, or anonymous when allowed; anything else none."""

    def __init__(self, users: dict[str, str], anonymous: bool):
        self.users, self.anonymous = users, anonymous

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        if username is None:
            return User(role=UserRole.Anonymous) if self.anonymous else None
        name = find_user(self.users, password or "", username)
        return User(role=UserRole.User, name=name) if name else None


class _Rules(PermissionRuleset):
    """Users may read, subscribe and call; anonymous clients (when allowed) neither call nor write."""

    def check_validity(self, user, action_type_id, body) -> bool:
        if user.role == UserRole.User:
            return action_type_id in _USER
        return user.role == UserRole.Anonymous and action_type_id in _USER - _CALL_OR_WRITE


def _argument(name: str, vtype: ua.VariantType, text: str) -> ua.Argument:
    arg = ua.Argument()
    arg.Name, arg.DataType, arg.ValueRank, arg.Description = name, ua.NodeId(vtype.value), -1, ua.LocalizedText(text)
    return arg


_REPLY = [_argument("Ok", V.Boolean, "true when done"), _argument("Message", V.String, "what was done, or why not")]


class OpcUaServer(BesideServer):
    name = "opcua"

    def __init__(self, view: LineView, cfg: OpcUaConfig, users: dict[str, str]):
        super().__init__(view)
        self.cfg, self.users = cfg, users
        self.port = cfg.port
        self.server: Server | None = None
        self.nodes: dict[str, object] = {}  # "RecipeManagement.CurrentRecipe" -> Node
        self._types: dict[str, V] = {}
        self._values: dict[str, object] = {}  # what each node was last given
        self._told: set[int] = set()  # alarms already sent as events
        self._last_seq: int | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.cfg.bind}:{self.port}/qc-inspect/"

    # --- start ---

    async def _open(self) -> None:
        if not self.users and not self.cfg.anonymous:
            raise ValueError(f"no users: set opcua.users_file or {PASSWORD_ENV} (or opcua.anonymous, read only)")
        check_port("opcua.port", self.cfg.bind, self.cfg.port)
        cert, key = self._pki()
        server = Server(user_manager=_Users(self.users, self.cfg.anonymous))
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.cfg.bind}:{self.cfg.port}/qc-inspect/")
        server.set_server_name(f"qc-inspect {self.rt.cfg.line}/{self.rt.cfg.station}")
        server.product_uri, server.manufacturer_name = NAMESPACE, "qc-inspect"
        await server.set_application_uri(self._app_uri)
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt], permission_ruleset=_Rules())
        server.set_identity_tokens([ua.UserNameIdentityToken, *([ua.AnonymousIdentityToken] if self.cfg.anonymous else [])])
        await setup_self_signed_certificate(key, cert, self._app_uri, socket.gethostname(),
                                            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                            {"commonName": f"qc-inspect {self.rt.cfg.station}"})
        key.chmod(0o600)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_certificate_validator(self._validate)
        await self._build(server)
        try:
            await server.start()
        except OSError as exc:
            raise ValueError(f"opcua.port {self.cfg.port} on {self.cfg.bind}: {exc.strerror or exc}") from None
        self.server = server
        self.port = server.bserver.port
        self._updating = asyncio.Lock()
        await self._update()

    @property
    def _app_uri(self) -> str:
        return f"{NAMESPACE}:{self.rt.cfg.line}:{self.rt.cfg.station}"

    def _pki(self) -> tuple[Path, Path]:
        """pki_dir's own certificate and key (made by the caller when missing), and its trusted and rejected
        folders, private to this user."""
        root = Path(self.cfg.pki_dir)
        for sub in ("own", "trusted", "rejected"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        return root / "own" / "cert.der", root / "own" / "key.pem"

    async def _validate(self, cert: x509.Certificate, app) -> None:
        """A client's certificate must be in trusted/ (or be issued by a CA there); an untrusted one is kept in
        rejected/ for review. The folder is read at each connection: one moved there is taken without a restart."""
        trusted = Path(self.cfg.pki_dir) / "trusted"
        try:
            if not any(f.is_file() for f in trusted.iterdir()):
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
            store = TrustStore([trusted], [])
            await store.load()
            await CertificateValidator(_CHECKS, store).validate(cert, app)
        except Exception:
            rejected = Path(self.cfg.pki_dir) / "rejected"
            if sum(1 for _ in rejected.iterdir()) >= MAX_REJECTED:  # a stream of strangers cannot fill the disk
                raise
            der = cert.public_bytes(Encoding.DER)
            name = f"{(app.ApplicationName.Text or 'client')[:40]}-{hashlib.sha1(der).hexdigest()[:12]}.der"
            (rejected / "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
             ).write_bytes(der)
            raise

    # --- the address space ---

    async def _build(self, server: Server) -> None:
        ns = await server.register_namespace(NAMESPACE)

        async def obj(parent, path: str):
            return await parent.add_object(ua.NodeId(path, ns), ua.QualifiedName(path.rsplit(".", 1)[-1], ns))

        async def var(parent, path: str, value, vtype: V):
            self.nodes[path] = await parent.add_variable(ua.NodeId(path, ns), ua.QualifiedName(path.rsplit(".", 1)[-1], ns),
                                                         ua.Variant(value, vtype))
            self._types[path] = vtype

        async def method(parent, path: str, fn, inputs: list[ua.Argument]):
            await parent.add_method(ua.NodeId(path, ns), ua.QualifiedName(path.rsplit(".", 1)[-1], ns), fn, inputs,
                                    _REPLY)

        vs = await obj(server.nodes.objects, "VisionSystem")
        for name in ("Line", "Station", "Version"):
            await var(vs, f"VisionSystem.{name}", "", V.String)
        sm = await obj(vs, "VisionSystem.VisionStateMachine")
        await var(sm, "VisionSystem.VisionStateMachine.CurrentState", "", V.String)
        await var(sm, "VisionSystem.VisionStateMachine.StateNumber", 0, V.UInt16)
        await method(sm, "VisionSystem.VisionStateMachine.Pause", self._pause, [])
        await method(sm, "VisionSystem.VisionStateMachine.Resume", self._resume, [])
        rm = await obj(vs, "VisionSystem.RecipeManagement")
        for name, value, vtype in (("CurrentRecipe", "", V.String), ("CurrentRecipeIndex", -1, V.Int32),
                                   ("Recipes", [], V.String), ("Changeover", "", V.String), ("Model", "", V.String),
                                   ("ModelSha256", "", V.String), ("Threshold", 0.0, V.Double)):
            await var(rm, f"VisionSystem.RecipeManagement.{name}", value, vtype)
        await method(rm, "VisionSystem.RecipeManagement.PrepareRecipe", self._prepare,
                     [_argument("ExternalId", V.String, "the recipe's name")])
        res = await obj(vs, "VisionSystem.ResultManagement")
        counters = await obj(res, "VisionSystem.ResultManagement.Counters")
        for name in ("Parts", "Passed", "Rejected", *(f"Reason_{r}" for r in REASON_CODES)):
            await var(counters, f"VisionSystem.ResultManagement.Counters.{name}", 0, V.UInt64)
        await method(counters, "VisionSystem.ResultManagement.Counters.ResetCounters", self._reset, [])
        last = await obj(res, "VisionSystem.ResultManagement.LastResult")
        for name, value, vtype in (("ResultId", "", V.String), ("Decision", "", V.String), ("Reason", "", V.String),
                                   ("Class", "", V.String), ("Score", 0.0, V.Double), ("Box", [], V.Int32),
                                   ("Time", datetime.fromtimestamp(0, timezone.utc), V.DateTime),
                                   ("Recipe", "", V.String), ("PartId", 0, V.UInt32)):
            await var(last, f"VisionSystem.ResultManagement.LastResult.{name}", value, vtype)
        alarm = await server.get_node(ua.ObjectIds.BaseEventType).add_object_type(
            ua.NodeId("QcAlarmEventType", ns), ua.QualifiedName("QcAlarmEventType", ns))
        await alarm.add_property(ua.NodeId("QcAlarmEventType.AlarmKind", ns), ua.QualifiedName("AlarmKind", ns), "",
                                 varianttype=V.String)
        self.alarms = await server.get_event_generator(alarm, vs)

    # --- following the line ---

    async def _serve(self, stopping) -> None:
        failing = False
        while not stopping.is_set():
            try:
                await self._update()
                failing = False
            except Exception as exc:  # never the end of the server; said once until it recovers
                if not failing:
                    self._warn("update", exc)
                failing = True
            try:
                await asyncio.wait_for(stopping.wait(), self.cfg.update_ms / 1000)
            except asyncio.TimeoutError:
                pass

    async def _set(self, path: str, value) -> None:
        if self._values.get(path, object()) == value:
            return
        self._values[path] = value
        now = datetime.now(timezone.utc)
        await self.server.write_attribute_value(self.nodes[path].nodeid, ua.DataValue(
            ua.Variant(value, self._types[path]), SourceTimestamp=now, ServerTimestamp=now))

    async def _update(self) -> None:
        async with self._updating:  # the loop's and a method's: one at a time
            await self._follow()

    async def _follow(self) -> None:
        v, rt, p = self.view, self.rt, "VisionSystem."
        model = rt.model
        index = v.recipe_index()
        for path, value in (("Line", rt.cfg.line), ("Station", rt.cfg.station), ("Version", VERSION),
                            ("VisionStateMachine.CurrentState", v.state),
                            ("VisionStateMachine.StateNumber", STATES.index(v.state)),
                            ("RecipeManagement.CurrentRecipe", v.recipe or ""),
                            ("RecipeManagement.CurrentRecipeIndex", -1 if index is None else index),
                            ("RecipeManagement.Recipes", v.recipes), ("RecipeManagement.Changeover", v.changeover),
                            ("RecipeManagement.Model", model.bundle.name),
                            ("RecipeManagement.ModelSha256", model.bundle.sha256),
                            ("RecipeManagement.Threshold", float(model.threshold))):
            await self._set(p + path, value)
        counts = v.counters()
        for name, key in (("Parts", "parts"), ("Passed", "pass"), ("Rejected", "reject"),
                          *((f"Reason_{r}", r) for r in REASON_CODES)):
            await self._set(f"{p}ResultManagement.Counters.{name}", counts[key])
        last = v.last()
        if last is not None and last["seq"] != self._last_seq:
            self._last_seq = last["seq"]
            q = f"{p}ResultManagement.LastResult."
            for name, value in (("ResultId", last["id"]), ("Decision", last["decision"]), ("Reason", last["reason"]),
                                ("Class", last["label"] or ""), ("Score", -1.0 if last["score"] is None else last["score"]),
                                ("Box", list(last["box"] or [])), ("Recipe", last.get("recipe") or ""),
                                ("Time", datetime.fromtimestamp(last["ts"], timezone.utc)),
                                ("PartId", last["seq"])):  # last: a client following PartId finds the rest set
                await self._set(q + name, value)
        await self._tell_alarms()

    async def _tell_alarms(self) -> None:
        recent = list(self.rt.recent_alarms)
        for a in recent:
            if a["n"] in self._told:
                continue
            self._told.add(a["n"])
            self.alarms.event.AlarmKind = a["kind"]
            self.alarms.event.Severity = 300 if a["kind"] == "late" else 700
            await self.alarms.trigger(datetime.fromtimestamp(a["ts"], timezone.utc), a["message"])
        self._told &= {a["n"] for a in recent}

    # --- methods: the commands' code path ---

    async def _call(self, fn, *args) -> list[ua.Variant]:
        reply = await self._loop.run_in_executor(None, fn, *args)
        try:
            await self._update()  # the client sees what its call did as soon as it returns
        except Exception as exc:  # the call is done all the same; the loop will try again
            self._warn("update", exc)
        message = reply.get("error") or ", ".join(f"{k} {v}" for k, v in reply.items() if k != "ok") or "done"
        return [ua.Variant(bool(reply.get("ok")), V.Boolean), ua.Variant(message, V.String)]

    async def _pause(self, parent) -> list[ua.Variant]:
        return await self._call(self.view.command, "pause", "opcua")

    async def _resume(self, parent) -> list[ua.Variant]:
        return await self._call(self.view.command, "resume", "opcua")

    async def _reset(self, parent) -> list[ua.Variant]:
        return await self._call(self.view.command, "reset", "opcua")

    async def _prepare(self, parent, name: ua.Variant) -> list[ua.Variant]:
        if not isinstance(name.Value, str):
            return [ua.Variant(False, V.Boolean), ua.Variant("ExternalId must be a recipe's name", V.String)]
        return await self._call(self.view.select, name.Value, "opcua")

    async def _close(self) -> None:
        if self.server is not None:
            await self.server.stop()

