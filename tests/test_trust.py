"""Nothing trusted blindly (issue 27): a bundle's whole card checked, signatures through a key, reference images,
commands a plant can trust (retained ones ignored, reloads by name, the deploy ACL), connection failures
that say why, private files."""

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.app import build_runtime
from edge.bundle import load_bundle
from edge.classifiers import make_classifier
from edge.config import load_config, validate_config
from edge.errors import EdgeError
from edge.pipeline import check_references
from edge.telemetry import JsonlTee
from firmware_io.mqtt.broker import MOSQUITTO, LocalBroker, free_port, wait_port
from firmware_io.mqtt.client import MQTTTelemetry
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.mqtt.spool import Spool
from qc.cli import main

from .conftest import write_card
from .test_mqtt import wait_for
from .test_pipeline import frames, make_runtime

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="ACLs and TLS are Mosquitto's (.ci/run installs it)")


def planted(bundle_dir: Path, folder: Path, **changes) -> Path:
    """A copy of the bundle with its card changed and its card hash computed again, as an attacker would."""
    shutil.copytree(bundle_dir, folder)
    card = json.loads((folder / "model.json").read_text())
    write_card(folder, card | changes)
    return folder


def client(port: int, user: str, password: str, name: str = "") -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"test-{user}{name}")
    c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert wait_for(c.is_connected)
    return c


# the card, whole -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [2.0, float("nan"), -1.0, 0.0, 1.0])
def test_a_planted_threshold_is_refused_by_verify_and_by_reload(bundle_dir, synth32, tmp_path, capsys, value):
    card = json.loads((bundle_dir / "model.json").read_text())
    bad = planted(bundle_dir, tmp_path / "bundles" / "planted", threshold=card["threshold"] | {"value": value})
    assert main(["bundle", "verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "threshold.value" in err and len(err.strip().splitlines()) == 1
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=2), tmp_path, bundles_dir=str(tmp_path / "bundles"))
    reply = rt.command("reload", {"bundle": "planted"})
    assert not reply["ok"] and "threshold.value" in reply["error"] and rt.bundle.path == bundle_dir


def test_a_bundle_threshold_outside_the_command_limits_is_refused_at_reload(bundle_dir, synth32, tmp_path):
    card = json.loads((bundle_dir / "model.json").read_text())
    planted(bundle_dir, tmp_path / "bundles" / "low", threshold=card["threshold"] | {"value": 0.004})
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=2), tmp_path, bundles_dir=str(tmp_path / "bundles"))
    reply = rt.command("reload", {"bundle": "low"})
    assert not reply["ok"] and "outside mqtt.threshold_limits [0.01, 0.99]" in reply["error"]


def test_labels_that_do_not_match_the_model_are_refused(bundle_dir, tmp_path, capsys):
    card = json.loads((bundle_dir / "model.json").read_text())
    planted(bundle_dir, tmp_path / "extra", labels=card["labels"] + ["dent"])
    assert main(["bundle", "verify", str(tmp_path / "extra")]) == 2
    err = capsys.readouterr().err
    assert f"name {len(card['labels']) + 1} classes; the output has {len(card['labels'])}" in err


def test_swapped_labels_are_caught_by_the_reference_images(bundle_dir, tmp_path, capsys):
    card = json.loads((bundle_dir / "model.json").read_text())
    assert len(card["references"]) == 4 and all((bundle_dir / r["file"]).stat().st_size < 20_000
                                                 for r in card["references"])
    exported = load_bundle(bundle_dir)
    check_references(exported, make_classifier(exported, "cpu", 1))  # the export's own scores hold here
    labels = card["labels"]
    ref = card["references"][0]
    hi, lo = max(labels, key=ref["scores"].get), min(labels, key=ref["scores"].get)
    swapped = [lo if x == hi else hi if x == lo else x for x in labels]  # the likeliest and the least likely
    cam = card["cam"] | {"good_index": swapped.index("good")}
    planted(bundle_dir, tmp_path / "swapped", labels=swapped, cam=cam)
    assert main(["bundle", "verify", str(tmp_path / "swapped")]) == 2
    err = capsys.readouterr().err
    assert "reference reference-0.png" in err and "swapped labels" in err


# signatures ---------------------------------------------------------------------------------------------------

def test_with_a_key_only_a_bundle_signed_with_it_is_loaded(bundle_dir, synth32, tmp_path, capsys):
    assert main(["bundle", "keygen", str(tmp_path / "keys")]) == 0
    key_id = json.loads(capsys.readouterr().out)["key_id"]
    assert main(["bundle", "keygen", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert stat.S_IMODE((tmp_path / "keys" / "bundle-signing.key").stat().st_mode) == 0o600
    public = tmp_path / "keys" / "bundle-signing.pub"
    bundles = tmp_path / "bundles"
    signed, unsigned, foreign = (bundles / n for n in ("signed", "unsigned", "foreign"))
    for b in (signed, unsigned, foreign):
        shutil.copytree(bundle_dir, b)
    assert main(["bundle", "sign", str(signed), "--key", str(tmp_path / "keys" / "bundle-signing.key")]) == 0
    assert main(["bundle", "sign", str(foreign), "--key", str(tmp_path / "other" / "bundle-signing.key")]) == 0
    capsys.readouterr()
    assert main(["bundle", "verify", str(signed), "--key", str(public)]) == 0
    assert json.loads(capsys.readouterr().out)["signed_by"] == key_id
    for bundle, problem in ((unsigned, "unsigned"), (foreign, "does not verify")):
        assert main(["bundle", "verify", str(bundle), "--key", str(public)]) == 2
        assert problem in capsys.readouterr().err
    tampered = bundles / "tampered"
    shutil.copytree(signed, tampered)
    card = json.loads((tampered / "model.json").read_text())
    write_card(tampered, card | {"threshold": card["threshold"] | {"value": 0.99}})  # its own hash recomputed
    assert main(["bundle", "verify", str(tampered), "--key", str(public)]) == 2
    assert "does not verify" in capsys.readouterr().err

    with pytest.raises(EdgeError, match="unsigned"):  # at start
        make_runtime(unsigned, frames(synth32, tmp_path, n=2), tmp_path, bundle_key=str(public))
    rt, tel = make_runtime(signed, tmp_path / "frames", tmp_path, bundle_key=str(public), bundles_dir=str(bundles))
    assert not rt.command("reload", {"bundle": "foreign"})["ok"]  # at reload
    assert not rt.command("reload", {"bundle": "tampered"})["ok"]
    assert rt.command("reload", {"bundle": "signed"})["ok"]


# commands ------------------------------------------------------------------------------------------------------

def test_commands_are_off_by_default_and_a_reload_names_a_bundle_never_a_path(bundle_dir, synth32, tmp_path):
    assert MQTTConfig().commands is False
    for name in ("edge.example.yaml", "pi.yaml", "jetson.yaml", "gige.yaml", "coral.yaml"):
        assert not load_config(DEPLOY / name).mqtt.commands, name
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=2), tmp_path)
    assert "reload by command is off" in rt.command("reload", {"bundle": "b"})["error"]
    shutil.copytree(bundle_dir, tmp_path / "bundles" / "v2")
    (tmp_path / "bundles" / "up").symlink_to(bundle_dir.parent)
    rt, tel = make_runtime(bundle_dir, tmp_path / "frames", tmp_path, bundles_dir=str(tmp_path / "bundles"))
    for payload in ({"path": str(bundle_dir)}, {"bundle": "../bundles/v2"}, {"bundle": str(bundle_dir)},
                    {"bundle": "up"}, {"bundle": "missing"}):
        reply = rt.command("reload", payload)
        assert not reply["ok"], payload
    assert rt.command("reload", {"bundle": "v2"})["ok"]


@needs_mosquitto
def test_under_the_deploy_acl_only_the_operator_commands_and_a_retained_command_is_ignored(tmp_path):
    users = {"station1": "s-pw", "qc-operator": "o-pw", "intruder": "i-pw"}
    broker = LocalBroker(tmp_path / "broker", users=users, acl_file=DEPLOY / "mosquitto-acl.conf").start()
    operator, intruder = client(broker.port, "qc-operator", "o-pw"), client(broker.port, "intruder", "i-pw")
    topic = "qc/line1/station1/cmd/pause"
    operator.publish(topic, "{}", qos=1, retain=True).wait_for_publish(5)  # kept by the broker: a trap
    os.environ["QC_TEST_BOX_PW"] = "s-pw"
    cfg = MQTTConfig(url=f"mqtt://station1@127.0.0.1:{broker.port}", password_env="QC_TEST_BOX_PW", commands=True,
                     spool_path=tmp_path / "spool.sqlite", reconnect_min_s=0.5, reconnect_max_s=1)
    tel = MQTTTelemetry(cfg, "line1", "station1", log_stream=open(os.devnull, "w"))
    obeyed = []
    tel.on_command(lambda name, payload: obeyed.append(name) or {"ok": True})
    watcher = client(broker.port, "qc-operator", "o-pw", "-watcher")
    alarms = []
    watcher.on_message = lambda c, u, m: alarms.append(json.loads(m.payload))
    watcher.subscribe("qc/line1/station1/alarm", 1)
    assert wait_for(tel.connected.is_set)
    assert wait_for(lambda: any(a["kind"] == "command_retained" for a in alarms))
    assert obeyed == []  # the retained pause was not obeyed
    operator.publish(topic, "", qos=1, retain=True).wait_for_publish(5)  # cleared
    intruder.publish("qc/line1/station1/cmd/resume", "{}", qos=1).wait_for_publish(5)
    operator.publish("qc/line1/station1/cmd/snapshot", "{}", qos=1).wait_for_publish(5)
    assert wait_for(lambda: obeyed == ["snapshot"])
    time.sleep(0.5)
    assert obeyed == ["snapshot"]  # the intruder's resume never reached the box
    for c in (operator, intruder, watcher):
        c.loop_stop()
        c.disconnect()
    tel.close()
    broker.stop()


# connection failures that speak --------------------------------------------------------------------------------

def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    key, pem = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(pem), "-days", "1", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)
    return key, pem


@needs_mosquitto
def test_a_tls_failure_says_why_once_and_raises_an_alarm(tmp_path):
    ca_key, ca = make_ca(tmp_path / "pki", "plant-ca")
    _, other_ca = make_ca(tmp_path / "pki", "other-ca")
    key, csr, cert = (tmp_path / "pki" / n for n in ("server.key", "server.csr", "server.pem"))
    (tmp_path / "pki" / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                 str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"],
                ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-out", str(cert), "-days", "1", "-extfile", str(tmp_path / "pki" / "san.ext")]):
        subprocess.run(cmd, check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nallow_anonymous true\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        cases = {"wrong CA": (f"mqtts://127.0.0.1:{port}", other_ca, "certificate: self-signed certificate in certificate chain"),
                 "plain to TLS": (f"mqtt://127.0.0.1:{port}", None, "a TLS port (use mqtts://)")}
        for name, (url, ca_file, reason) in cases.items():
            log = tmp_path / f"{name}.log"
            cfg = MQTTConfig(url=url, ca_file=ca_file, spool_path=tmp_path / f"{name}.sqlite", reconnect_min_s=0.5,
                             reconnect_max_s=1)
            with open(log, "w") as stream:
                tel = MQTTTelemetry(cfg, "l1", "s1", log_stream=stream)
                time.sleep(4)  # several attempts
                tel.close(timeout=0.5)
            said = [line for line in log.read_text().splitlines() if "cannot connect" in line]
            assert len(said) == 1 and reason in said[0], (name, log.read_text())
            spool = Spool(tmp_path / f"{name}.sqlite")
            alarms = [json.loads(r.payload) for r in spool.after(0, 100) if r.kind == "alarm"]
            spool.close()
            assert [a["kind"] for a in alarms] == ["mqtt_connect_failed"] and reason in alarms[0]["message"]
        ok = MQTTTelemetry(MQTTConfig(url=f"mqtts://127.0.0.1:{port}", ca_file=ca, spool_path=tmp_path / "ok.sqlite"),
                           "l1", "s1", log_stream=open(os.devnull, "w"))
        assert wait_for(ok.connected.is_set)  # the right CA connects
        ok.close()
    finally:
        broker.terminate()
        broker.wait(10)


def test_a_password_in_the_url_is_refused(tmp_path, capsys):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("bundle: /opt/qc/bundle\nmqtt: {enabled: true, url: 'mqtts://edge:hunter2@broker:8883'}\n")
    assert main(["config", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.url" in err and "holds a password" in err and "hunter2" not in err.replace("edge:hunter2@", "")
    (tmp_path / "pw").write_text("hunter2\n")
    assert MQTTConfig(url="mqtts://edge@broker:8883", password_file=tmp_path / "pw",
                      password_env="QC_TEST_NOT_SET").password == "hunter2"


# private files -------------------------------------------------------------------------------------------------

def test_spool_events_and_store_files_are_private(bundle_dir, synth32, tmp_path):
    data = tmp_path / "data"
    cfg = MQTTConfig(url="mqtt://127.0.0.1:9", spool_path=data / "spool" / "spool.sqlite")
    tel = JsonlTee(MQTTTelemetry(cfg, "l1", "s1", log_stream=open(os.devnull, "w")), data / "events.jsonl")
    rt = build_runtime(validate_config({"bundle": str(bundle_dir), "decision": {"threshold": 0.0},
                                        "store": {"dir": str(data / "rejects")}, "gpio": {"backend": "sim"},
                                        "source": {"kind": "folder", "path": str(frames(synth32, tmp_path, n=3))}}),
                       telemetry=tel)
    rt.run(on_stats=lambda line: None)
    mode = {p.relative_to(data).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in data.rglob("*")}
    assert mode["spool"] == 0o700 and mode["rejects"] == 0o700
    files = {k: v for k, v in mode.items() if k not in ("spool", "rejects")}
    assert len([k for k in files if k.startswith("rejects/")]) >= 6  # frames, boxed copies, sidecars
    assert set(files.values()) == {0o600}, files
