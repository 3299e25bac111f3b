"""The PLC servers cost the line nothing: pipeline capacity (unpaced 640x480 frames, as `qc bench`) with the
OPC UA and Modbus TCP servers each polled by a real client at 10 Hz (OPC UA: state, counters and the last
result in one Read; Modbus: every input register), against both off, in the same run (off, on, four times).
The CPU time of each server's thread while on is measured as well, and the client process's (what a PLC's
own machine would spend, here taken from the line's two cores).
The clients run in a process of their own, as a PLC runs on a machine of its own; on a 2-core machine they
still take their share of the CPU from the line.

    qc bench --bundle BUNDLE --plc          # JSON; target: capacity with them >= 0.95 x without
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

from bench.station import TARGET, beside_vs_off, per_run
from edge.plc import LineView
from edge.plc.modbus import INPUT_SIZE, ModbusServer
from edge.plc.opcua import NAMESPACE, OpcUaServer
from edge.users import digest

POLL_HZ = 10.0
polls: list[dict] = []


def _opcua_client(port: int, pki: Path, done, counts) -> None:
    from asyncua import Client, ua
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from cryptography.x509.oid import ExtendedKeyUsageOID

    async def poll():
        cert, key, uri = pki / "client.der", pki / "client.pem", "urn:qc-bench:plc"
        await setup_self_signed_certificate(key, cert, uri, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH], {})
        (pki / "trusted" / "bench.der").write_bytes(cert.read_bytes())
        client = Client(f"opc.tcp://127.0.0.1:{port}/qc-inspect/", timeout=10)
        client.application_uri = uri
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key))
        client.set_user("bench")
        client.set_password("bench-secret")
        async with client:
            ns = await client.get_namespace_index(NAMESPACE)
            nodes = [client.get_node(ua.NodeId(f"VisionSystem.{p}", ns)) for p in (
                "VisionStateMachine.CurrentState", "RecipeManagement.CurrentRecipe",
                "ResultManagement.Counters.Parts", "ResultManagement.Counters.Rejected",
                "ResultManagement.LastResult.PartId", "ResultManagement.LastResult.Decision",
                "ResultManagement.LastResult.Score")]
            while not done.is_set():
                await client.read_values(nodes)
                counts[0] += 1
                await asyncio.sleep(1 / POLL_HZ)

    asyncio.run(poll())


def _modbus_client(port: int, done, counts) -> None:
    from pymodbus.client import ModbusTcpClient

    with ModbusTcpClient("127.0.0.1", port=port, timeout=5) as client:
        while not done.wait(1 / POLL_HZ):
            counts[1] += not client.read_input_registers(0, count=INPUT_SIZE).isError()


def _plc(opcua_port: int, pki: Path, modbus_port: int, done, counts) -> None:
    """The PLC's side, in a process of its own: both clients polling until `done`."""
    threads = [threading.Thread(target=_opcua_client, args=(opcua_port, pki, done, counts)),
               threading.Thread(target=_modbus_client, args=(modbus_port, done, counts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _cpu_s(path: str) -> float:
    """CPU seconds (user + system) of a thread (/proc/self/task/ID/stat) or process (/proc/PID/stat)."""
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _servers_with_clients(runtime):
    tmp = tempfile.TemporaryDirectory()
    pki = Path(tmp.name) / "pki"
    view = LineView(runtime)
    opcua = OpcUaServer(view, runtime.cfg.opcua.model_copy(update={"enabled": True, "port": 0, "pki_dir": pki}),
                        {"bench": digest("bench-secret")}).start()
    modbus = ModbusServer(view, runtime.cfg.modbus.model_copy(update={"enabled": True, "port": 0})).start()
    mp = multiprocessing.get_context("spawn")
    done, counts = mp.Event(), mp.Array("i", 2)
    plc = mp.Process(target=_plc, args=(opcua.port, pki, modbus.port, done, counts), daemon=True)
    plc.start()
    deadline = time.monotonic() + 60
    while min(counts[:]) == 0 and plc.is_alive() and time.monotonic() < deadline:  # both polling before parts flow
        time.sleep(0.05)
    stats = [f"/proc/self/task/{opcua.native_id}/stat", f"/proc/self/task/{modbus.native_id}/stat",
             f"/proc/{plc.pid}/stat"]
    started = time.monotonic(), [_cpu_s(p) for p in stats]

    def stop():
        seconds = time.monotonic() - started[0]
        cpu = [round((_cpu_s(p) - c0) / seconds, 4) for p, c0 in zip(stats, started[1])]
        done.set()
        plc.join(20)
        opcua.stop()
        modbus.stop()
        tmp.cleanup()
        polls.append({"opcua": counts[0], "modbus": counts[1], "cpu_share": {"opcua": cpu[0], "modbus": cpu[1],
                                                                        "plc_process": cpu[2]}})

    return stop


def run_plc_benchmark(bundle_path: Path, seconds: float = 5.0, warmup: float = 1.0, rounds: int = 4) -> dict:
    """`rounds` pairs of runs: a 2-core machine's capacity drifts by 5-10 % between runs of a few seconds."""
    polls.clear()
    runs, mean, ratio = beside_vs_off(bundle_path, _servers_with_clients, seconds, warmup, rounds)
    return {"benchmark": "plc", "bundle": str(bundle_path), "poll_hz": POLL_HZ, "seconds": seconds,
            "capacity_per_s": {k: round(v, 1) for k, v in mean.items()}, **per_run(runs),
            "polls_answered": list(polls), "capacity_on_vs_off": ratio, "target": TARGET,
            "meets_target": ratio >= TARGET}
