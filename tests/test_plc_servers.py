"""The PLC's own protocols (#32) against a running line: a real asyncua client over Basic256Sha256 and a real
pymodbus client, both on loopback, while parts flow from a folder source."""

import asyncio
import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography.x509.oid import ExtendedKeyUsageOID
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from edge.app import start_servers
from edge.errors import QCError
from edge.plc import REASON_CODES, LineView
from edge.plc.modbus import HOLDING, INPUT, INPUT_SIZE, MIRROR, ModbusServer
from edge.plc.opcua import NAMESPACE, OpcUaServer, load_opcua_users
from edge.users import find_user, secret_line

from .test_mqtt import wait_for
from .test_pipeline import frames, make_runtime
from .test_plc import RECIPES, bundles  # noqa: F401  (the fixture)

VS = "VisionSystem."


@pytest.fixture
def line(bundle_dir, bundles, synth32, tmp_path):  # noqa: F811
    """Recipes plain (index 1), ribbed (2) and broken (3) on a folder source looping at 50 parts/s."""
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=20), tmp_path, bundles_dir=str(bundles),
                           recipes=RECIPES, recipe="plain", source__rate_hz=50, source__loop=True)
    runner = threading.Thread(target=rt.run, kwargs={"on_stats": lambda line: None})
    runner.start()
    assert wait_for(lambda: rt.running.is_set(), timeout=30)
    yield rt, tel
    rt.stop_event.set()
    runner.join(30)


# --- OPC UA ---------------------------------------------------------------------------------------------

def _client_cert(folder, uri="urn:qc-test:plc"):
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.der", folder / "key.pem"
    asyncio.run(setup_self_signed_certificate(key, cert, uri, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                              {"commonName": "plc"}))
    return cert, key, uri


@pytest.fixture
def opcua(line, tmp_path, monkeypatch):
    """The line's OPC UA server (user alice), and a client certificate it trusts."""
    monkeypatch.delenv("QC_OPCUA_PASSWORD", raising=False)
    rt, tel = line
    users = tmp_path / "opcua-users"
    users.write_text(secret_line("alice", "alice-secret") + "\n")
    cfg = rt.cfg.opcua.model_copy(update={"enabled": True, "port": 0, "users_file": users, "pki_dir": tmp_path / "pki"})
    server = OpcUaServer(LineView(rt), cfg, load_opcua_users(users)).start()
    cert, key, uri = _client_cert(tmp_path / "client")
    shutil.copy(cert, tmp_path / "pki" / "trusted" / "plc.der")
    yield rt, tel, server, (cert, key, uri)
    server.stop()


async def _connect(server, cert, key, uri, user="alice", password="alice-secret", secure=True) -> Client:
    client = Client(server.url.replace(server.cfg.bind, "127.0.0.1"), timeout=10)
    client.application_uri = uri
    if secure:
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key))
    if user:
        client.set_user(user)
        client.set_password(password)
    await client.connect()
    return client


async def _node(client, path):
    ns = await client.get_namespace_index(NAMESPACE)
    return client.get_node(ua.NodeId(path, ns))


async def _read(client, path):
    return await (await _node(client, VS + path)).read_value()


async def _call(client, parent, method, *args):
    ok, message = await (await _node(client, VS + parent)).call_method(
        ua.QualifiedName(method, await client.get_namespace_index(NAMESPACE)), *args)
    return ok, message


def test_an_opcua_client_browses_reads_subscribes_and_changes_over_through_the_commands(opcua):
    rt, tel, server, (cert, key, uri) = opcua

    async def session():
        client = await _connect(server, cert, key, uri)
        try:
            vs = await _node(client, "VisionSystem")
            names = {(await c.read_browse_name()).Name for c in await vs.get_children()}
            assert {"VisionStateMachine", "RecipeManagement", "ResultManagement", "Line", "Station"} <= names
            assert await _read(client, "RecipeManagement.Recipes") == ["plain", "ribbed", "broken"]
            assert await _read(client, "RecipeManagement.CurrentRecipe") == "plain"
            assert await _read(client, "VisionStateMachine.CurrentState") == "running"

            seen, alarms = [], []

            class Handler:
                def datachange_notification(self, node, value, data):
                    seen.append(value)

                def event_notification(self, event):
                    alarms.append((event.AlarmKind, event.Message.Text))

            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change(await _node(client, VS + "ResultManagement.LastResult.PartId"))
            alarm_type = await _node(client, "QcAlarmEventType")
            await sub.subscribe_events(vs, alarm_type)
            for _ in range(100):
                if len(set(seen)) >= 4:
                    break
                await asyncio.sleep(0.1)
            assert len(set(seen)) >= 4 and seen[1:] == sorted(seen[1:])  # parts, in capture order

            counters = [await _node(client, f"{VS}ResultManagement.Counters.{n}") for n in
                        ("Parts", "Passed", "Rejected", *(f"Reason_{r}" for r in REASON_CODES))]
            parts, passed, rejected, *reasons = await client.read_values(counters)  # one Read: one moment
            assert parts > 0 and passed + rejected == parts == sum(reasons)
            assert parts <= rt.stats.totals()["parts"]  # the line's own count, read after

            ok, message = await _call(client, "RecipeManagement", "PrepareRecipe", "ribbed")
            assert ok, message
            assert await _read(client, "RecipeManagement.CurrentRecipe") == "ribbed"  # when the call returns
            assert await _read(client, "RecipeManagement.CurrentRecipeIndex") == 2
            assert rt.model.recipe == "ribbed" and rt.bundle.name == "ribbed"
            for name in ("dented", "../plain", str(rt.model.path)):  # a recipe's name, never a file
                ok, message = await _call(client, "RecipeManagement", "PrepareRecipe", name)
                assert not ok and f"no recipe {name!r}" in message and rt.model.recipe == "ribbed"
            ok, message = await _call(client, "RecipeManagement", "PrepareRecipe", "broken")
            assert not ok and rt.model.recipe == "ribbed"
            for _ in range(50):
                if alarms:
                    break
                await asyncio.sleep(0.1)
            assert alarms and alarms[0][0] == "recipe_failed" and "broken" in alarms[0][1]

            assert (await _call(client, "VisionStateMachine", "Pause"))[0] and rt.paused.is_set()
            assert await _read(client, "VisionStateMachine.CurrentState") == "paused"
            assert (await _call(client, "VisionStateMachine", "Resume"))[0] and not rt.paused.is_set()
            assert (await _call(client, "ResultManagement.Counters", "ResetCounters"))[0]
            assert await _read(client, "ResultManagement.Counters.Parts") < parts
            assert rt.stats.totals()["parts"] > parts  # the line's own counters go on
            section = _readme_section()  # the README's address space is the server's
            for path in server.nodes:
                leaf = path.rsplit(".", 1)[-1]
                assert (leaf if not leaf.startswith("Reason_") else "Reason_<reason>") in section, path
            with pytest.raises(ua.UaError):  # read-only
                await (await _node(client, VS + "RecipeManagement.CurrentRecipe")).write_value("plain")
        finally:
            await client.disconnect()

    asyncio.run(session())
    events = [e for e in tel.inspections if e.get("recipe") == "ribbed"]
    assert events  # parts were decided under the recipe the PLC chose


def test_opcua_refuses_a_client_without_credentials_security_or_a_trusted_certificate(opcua, tmp_path):
    rt, tel, server, (cert, key, uri) = opcua

    async def refused(**kw):
        with pytest.raises(Exception) as caught:  # noqa: PT011  (asyncua raises a status code or closes)
            client = await _connect(server, **kw)
            await client.disconnect()
        return caught.value

    other, other_key, other_uri = _client_cert(tmp_path / "stranger", "urn:qc-test:stranger")

    async def attempts():
        await refused(cert=cert, key=key, uri=uri, user=None)  # anonymous: not offered
        await refused(cert=cert, key=key, uri=uri, password="guess")
        await refused(cert=cert, key=key, uri=uri, user="bob", password="alice-secret")  # another's password
        await refused(cert=cert, key=key, uri=uri, user="alïce", password="alice-secret")
        await refused(cert=cert, key=key, uri=uri, secure=False)  # no encryption: no such endpoint
        await refused(cert=other, key=other_key, uri=other_uri)  # right password, untrusted certificate
        kept = list((tmp_path / "pki" / "rejected").iterdir())
        assert len(kept) == 1 and kept[0].read_bytes() == other.read_bytes()
        shutil.move(kept[0], tmp_path / "pki" / "trusted" / kept[0].name)  # an administrator trusts it
        client = await _connect(server, other, other_key, other_uri)
        assert await _read(client, "Station") == rt.cfg.station
        await client.disconnect()

    asyncio.run(attempts())
    assert not rt.paused.is_set()
    key_file = tmp_path / "pki" / "own" / "key.pem"
    assert key_file.stat().st_mode & 0o077 == 0  # the server's key is private


def test_anonymous_opcua_when_allowed_reads_but_never_calls(line, tmp_path, monkeypatch):
    monkeypatch.delenv("QC_OPCUA_PASSWORD", raising=False)
    rt, tel = line
    cfg = rt.cfg.opcua.model_copy(update={"enabled": True, "port": 0, "anonymous": True, "pki_dir": tmp_path / "pki"})
    server = OpcUaServer(LineView(rt), cfg, {}).start()
    cert, key, uri = _client_cert(tmp_path / "client")
    shutil.copy(cert, tmp_path / "pki" / "trusted" / "plc.der")

    async def session():
        client = await _connect(server, cert, key, uri, user=None)
        try:
            assert await _read(client, "VisionStateMachine.CurrentState") == "running"
            with pytest.raises(ua.UaStatusCodeError):
                await _call(client, "VisionStateMachine", "Pause")
        finally:
            await client.disconnect()

    try:
        asyncio.run(session())
    finally:
        server.stop()
    assert not rt.paused.is_set()


def test_start_up_errors_name_the_setting(line, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("QC_OPCUA_PASSWORD", raising=False)
    rt, tel = line
    cfg = rt.cfg.opcua.model_copy(update={"enabled": True, "port": 0, "pki_dir": tmp_path / "pki"})
    with pytest.raises(QCError, match="no users: set opcua.users_file or QC_OPCUA_PASSWORD"):
        OpcUaServer(LineView(rt), cfg, {}).start()
    whole = rt.cfg.model_copy(update={"opcua": cfg, "web": rt.cfg.web.model_copy(update={"port": 0})})
    with pytest.raises(QCError, match="no users"):
        start_servers(rt, whole)  # the station it had started is stopped again
    assert wait_for(lambda: not [t for t in threading.enumerate() if t.name == "station"], timeout=10)
    monkeypatch.setenv("QC_OPCUA_PASSWORD", "from-env")
    assert set(load_opcua_users(None)) == {"plc"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = cfg.model_copy(update={"port": busy.getsockname()[1]})
        with pytest.raises(QCError, match=f"opcua: opcua.port {taken.port} on 127.0.0.1: Address already in use"):
            OpcUaServer(LineView(rt), taken, load_opcua_users(None)).start()
        modbus = rt.cfg.modbus.model_copy(update={"enabled": True, "port": taken.port})
        with pytest.raises(QCError, match=f"modbus: modbus.port {taken.port} on 127.0.0.1: Address already in use"):
            ModbusServer(LineView(rt), modbus).start()
    assert not [r for r in caplog.records if r.exc_info]  # one line each, no library's traceback in the log


# --- Modbus ---------------------------------------------------------------------------------------------

@pytest.fixture
def modbus(line):
    rt, tel = line
    server = ModbusServer(LineView(rt), rt.cfg.modbus.model_copy(update={"enabled": True, "port": 0})).start()
    client = ModbusTcpClient("127.0.0.1", port=server.port, timeout=5, retries=0)
    assert client.connect()
    yield rt, tel, server, client
    client.close()
    server.stop()


def _u32(regs, name):
    at, size = INPUT[name]
    return regs[at] << 16 | regs[at + 1] if size == 2 else regs[at]


def _inputs(client):
    reply = client.read_input_registers(0, count=INPUT_SIZE)
    assert not reply.isError(), reply
    return reply.registers


def test_a_modbus_client_reads_the_results_and_changes_over_by_the_recipe_register(modbus):
    rt, tel, server, client = modbus
    assert wait_for(lambda: _u32(_inputs(client), "result_number") >= 3, timeout=30)
    regs = _inputs(client)
    assert _u32(regs, "state") == 1 and _u32(regs, "recipe_index") == 1
    assert _u32(regs, "pass") + _u32(regs, "reject") == _u32(regs, "parts") > 0
    assert sum(_u32(regs, f"reason_{r}") for r in REASON_CODES) == _u32(regs, "parts")
    assert _u32(regs, "decision") in (1, 2) and _u32(regs, "class") < len(rt.bundle.labels)
    assert 0 <= _u32(regs, "score") <= 10000 and abs(_u32(regs, "time_s") - time.time()) < 60
    mirror = client.read_holding_registers(MIRROR, count=INPUT_SIZE)
    assert not mirror.isError() and _u32(mirror.registers, "recipe_index") == 1

    assert not client.write_register(HOLDING["recipe_index"], 2).isError()
    assert wait_for(lambda: (r := _inputs(client))[INPUT["changeover"][0]] == 0 and _u32(r, "recipe_index") == 2,
                    timeout=30)
    assert rt.model.recipe == "ribbed"
    assert client.read_holding_registers(0, count=2).registers == [2, 0]
    assert wait_for(lambda: any(e.get("recipe") == "ribbed" for e in tel.inspections), timeout=30)

    assert not client.write_register(HOLDING["command"], 1).isError() and rt.paused.is_set()
    assert _u32(_inputs(client), "state") == 2
    assert not client.write_register(HOLDING["command"], 2).isError() and not rt.paused.is_set()
    before = _u32(_inputs(client), "parts")
    assert not client.write_register(HOLDING["command"], 3).isError()
    assert _u32(_inputs(client), "parts") < before <= rt.stats.totals()["parts"]

    assert not client.write_register(HOLDING["recipe_index"], 3).isError()  # broken: refused, alarmed
    assert wait_for(lambda: _inputs(client)[INPUT["changeover"][0]] == 2, timeout=30)
    assert rt.model.recipe == "ribbed" and any(a["kind"] == "recipe_failed" for a in rt.recent_alarms)


@pytest.mark.parametrize("request_, code", [
    (lambda c: c.write_register(HOLDING["recipe_index"], 9), 3),  # no recipe has index 9
    (lambda c: c.write_register(HOLDING["command"], 7), 3),  # no such command
    (lambda c: c.write_registers(HOLDING["recipe_index"], [2, 99]), 3),  # one bad value: none is done
    (lambda c: c.write_register(MIRROR, 1), 2),  # the results are read-only
    (lambda c: c.write_register(5, 1), 2),  # nothing there
    (lambda c: c.read_input_registers(INPUT_SIZE, count=1), 2),
    (lambda c: c.read_coils(0, count=1), 2),
])
def test_modbus_answers_a_bad_request_with_its_exception_code_and_goes_on(modbus, request_, code):
    rt, tel, server, client = modbus
    reply = request_(client)
    assert reply.isError() and reply.exception_code == code
    assert rt.model.recipe == "plain" and not rt.paused.is_set()
    assert not client.read_input_registers(0, count=INPUT_SIZE).isError()  # the server is still there


def test_an_idle_modbus_connection_holds_up_no_other_and_the_line_never_waits_for_the_server(modbus):
    rt, tel, server, client = modbus
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    idle[1].sendall(b"\x00\x01\x00\x00\x00\x06")  # half a request, never finished
    try:
        for _ in range(5):
            assert not client.read_input_registers(0, count=INPUT_SIZE).isError()
        # a server stuck in its own loop (a hung handler) holds up its clients, never a part
        parts = rt.stats.totals()["parts"]
        server._loop.call_soon_threadsafe(time.sleep, 2.0)
        time.sleep(0.2)
        assert wait_for(lambda: rt.stats.totals()["parts"] >= parts + 20, timeout=1.7)
    finally:
        for s in idle:
            s.close()
    assert not client.read_input_registers(0, count=INPUT_SIZE).isError()


def test_modbus_takes_connections_only_from_the_allowed_addresses(line):
    rt, tel = line
    cfg = rt.cfg.modbus.model_copy(update={"enabled": True, "port": 0, "allow": ["10.9.9.0/24"]})
    server = ModbusServer(LineView(rt), cfg).start()
    client = ModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=0)
    try:
        client.connect()
        with pytest.raises((ModbusIOException, ConnectionError)):
            reply = client.read_input_registers(0, count=1)
            if reply.isError():
                raise ModbusIOException(str(reply))
    finally:
        client.close()
        server.stop()


def _readme_section() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    return text[text.index("## 10. Connect to a PLC"):text.index("## What was verified where")]


def test_the_readme_register_map_is_the_servers():
    rows = [r for r in _readme_section().splitlines() if r.startswith("| `") or r.startswith("| |")]
    holding = [re.findall(r"`(\d+)` (\w+)", r.split("|")[1]) for r in rows]
    assert [h for h in holding if h] == [[("0", "recipe")], [("1", "command")]]
    assert HOLDING == {"recipe_index": 0, "command": 1}
    tokens = [t for r in rows for t in re.findall(r"`([\d-]+)`", r.split("|")[2])]
    expected = []
    for name, (at, size) in INPUT.items():
        token = f"{at}-{at + size - 1}" if size == 2 else str(at)
        if name.startswith(("box_y", "box_w", "box_h", "reason_")) and name != "reason_ok":
            continue  # one token for the box, one for the reasons
        expected.append({"box_x": f"{at}-{at + 3}", "reason_ok": f"{at}-{at + 2 * len(REASON_CODES) - 1}"}.get(name, token))
    assert tokens == expected
    assert "per reason: " + ", ".join(REASON_CODES) + " |" in _readme_section()
    assert f"holding {MIRROR}-{MIRROR + INPUT_SIZE - 1}" in _readme_section()


def test_qc_makes_opcua_users_and_checks_a_config_that_enables_the_servers(tmp_path, bundle_dir, monkeypatch,
                                                                              capsys):
    from qc.cli import main

    monkeypatch.delenv("QC_OPCUA_PASSWORD", raising=False)
    assert main(["opcua", "user", "line-plc"]) == 0
    made = json.loads(capsys.readouterr().out)
    users = tmp_path / "users"
    users.write_text(made["users_file_line"] + "\n")
    assert made["password"] not in users.read_text()
    assert find_user(load_opcua_users(users), made["password"], "line-plc") == "line-plc"
    assert find_user(load_opcua_users(users), made["password"], "other") is None
    config = tmp_path / "edge.yaml"
    config.write_text(f"bundle: {bundle_dir}\nopcua: {{enabled: true, pki_dir: {tmp_path / 'pki'}}}\n"
                      f"modbus: {{enabled: true, allow: [10.0.0.5, 10.1.0.0/16]}}\n")
    assert main(["config", "check", str(config)]) == 0
    for text, error in ((f"opcua: {{enabled: true, users_file: {tmp_path / 'nope'}}}", "opcua.users_file .*nope: cannot be read"),
                        ("modbus: {enabled: true, allow: [plc-1]}", "modbus.allow 'plc-1' is not an address or a network")):
        config.write_text(f"bundle: {bundle_dir}\n{text}\n")
        capsys.readouterr()
        assert main(["config", "check", str(config)]) == 2
        assert re.search(error, capsys.readouterr().err)


def test_qc_run_wiring_starts_the_enabled_servers_and_the_plc_bench_polls_them(line, bundle_dir):
    rt, tel = line
    cfg = rt.cfg.model_copy(update={"web": rt.cfg.web.model_copy(update={"enabled": False}),
                                    "modbus": rt.cfg.modbus.model_copy(update={"enabled": True, "port": 0})})
    servers = start_servers(rt, cfg)
    try:
        assert [s.name for s in servers] == ["modbus"]
        with ModbusTcpClient("127.0.0.1", port=servers[0].port, timeout=5) as client:
            assert _u32(_inputs(client), "state") == 1
    finally:
        for s in servers:
            s.stop()

    from bench.plc import run_plc_benchmark

    r = run_plc_benchmark(bundle_dir, seconds=0.5, warmup=0.2, rounds=1)
    assert len(r["polls_answered"]) == 1 and min(r["polls_answered"][0][k] for k in ("opcua", "modbus")) > 0
    assert r["capacity_on_vs_off"] == pytest.approx(r["capacity_per_s"]["on"] / r["capacity_per_s"]["off"], abs=0.02)
