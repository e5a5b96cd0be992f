"""HL7 v2 ORU^R01 over MLLP (issue #18): the message a phantom loop's report makes, sent by
``pacs_agent.hl7_mllp.send_oru`` to an MLLP peer on loopback (``hl7_peer``) that parses and
validates it with hl7apy as HL7 2.5.1 and answers as scripted.

Shown: every reported value arrives as an OBX with its LOINC code, UCUM unit, range and
abnormal flag; preliminary, final and amended versions of one study arrive as P, F and C
under one filler order number with distinct control ids; AE and timeouts are retryable, AR is
not, an ACK for another control id is no delivery; delimiters in names and text are escaped;
a loop without Patient ID and Name invents neither; the real SonoSite loop, analysed by the
node, has no LV number in its message.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import socket
import tempfile
import time
from pathlib import Path

import pytest
from hl7_peer import MllpPeer
from orthanc_helpers import phantom_cache
from reporting_helpers import (
    SEED_ONE_STUDY,
    a4c_paths,
    demo_algorithms,
    draft,
    load_loop,
    signature,
)

from pacs_agent.config import ConfigError, load_config
from pacs_agent.hl7_mllp import control_id_of, send_oru
from reporting import codes
from reporting.hl7_oru import CONCLUSIONS, build_oru, escape, unescape
from reporting.interpretation import interpret
from reporting.types import DEMO_LABEL_ASCII
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    KEY_LV_SV,
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    reported_values,
)

TIMEOUT_S = 10.0
LV_KEYS = {KEY_LVEF_REGRESSION, KEY_LVEF_DISKS, KEY_LV_EDV, KEY_LV_ESV, KEY_LV_SV}
MESSAGE_TIME = dt.datetime(2024, 8, 16, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


@pytest.fixture
def peer():
    with MllpPeer() as running:
        yield running


def _oru(loop, report=None, source=None, measurements=None, **kwargs) -> str:
    return build_oru(
        source or loop.source,
        measurements or loop.measurements,
        demo_algorithms(),
        report or draft(),
        receiving_application="TEST-EHR",
        receiving_facility="WARD",
        message_time=MESSAGE_TIME,
        **kwargs,
    )


def _send(peer: MllpPeer, message: str, timeout_s: float = TIMEOUT_S):
    return send_oru(peer.host, peer.port, message, timeout_s)


# --- what hl7apy reads from a received message -----------------------------------------------


def _order(message):
    return message.oru_r01_patient_result.oru_r01_order_observation


def _pid(message):
    return message.oru_r01_patient_result.oru_r01_patient.pid


def _observations(message) -> dict[str, tuple]:
    """OBX by this node's key (the alternate code, OBX-3.4) or by LOINC code for the others,
    with the texts of its NTEs (unescaped)."""
    out = {}
    for group in _order(message).oru_r01_observation:
        obx = group.obx
        key = obx.obx_3.ce_4.to_er7() or obx.obx_3.ce_1.to_er7()
        notes = [_joined(n.nte_3) for n in group.children if n.name == "NTE"]
        out[key] = (obx, notes)
    return out


def _lines(obx) -> list[str]:
    """A TX OBX's display lines: OBX-5's repetitions, unescaped."""
    return [unescape(repetition.to_er7()) for repetition in obx.obx_5]


def _joined(field) -> str:
    """A wrapped text (NTE-3, OBX-5) as one line: its repetitions joined by spaces."""
    return " ".join(unescape(repetition.to_er7()) for repetition in field)


# --- the message --------------------------------------------------------------------------


def test_every_reported_value_arrives_with_code_unit_range_and_flag(loop, peer) -> None:
    message = _oru(loop)
    outcome = _send(peer, message)
    assert outcome.ok and outcome.ack_code == "AA" and not outcome.retryable, outcome
    (received,) = peer.received
    assert received.problem == "", received.problem  # hl7apy: strict 2.5.1 parse + validate
    parsed = received.message
    assert parsed.name == "ORU_R01"
    msh = parsed.msh
    assert msh.msh_3.to_er7() == "ECHO-AGENT"
    assert (msh.msh_5.to_er7(), msh.msh_6.to_er7()) == ("TEST-EHR", "WARD")
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and msh.msh_12.to_er7() == "2.5.1"
    assert msh.msh_10.to_er7() == outcome.control_id == control_id_of(message)
    assert msh.msh_7.to_er7() == "20240816100000+0000"

    source = loop.source
    pid = _pid(parsed)
    assert pid.pid_3.cx_1.to_er7() == source.patient_id
    assert pid.pid_3.cx_5.to_er7() == "MR"
    assert pid.pid_5.xpn_1.to_er7() == source.patient_name.split("^")[0]
    assert pid.pid_7.to_er7() == source.patient_birth_date
    assert pid.pid_8.to_er7() == source.patient_sex

    obr = _order(parsed).obr
    assert obr.obr_4.to_er7() == "42148-7^US Heart^LN"  # the FHIR DiagnosticReport's code
    assert obr.obr_3.ei_1.to_er7() == source.study_instance_uid
    assert obr.obr_18.to_er7() == source.accession_number
    assert obr.obr_24.to_er7() == "CUS" and obr.obr_25.to_er7() == "P"
    order_notes = [_joined(n.nte_3) for n in _order(parsed).children if n.name == "NTE"]
    assert order_notes == [DEMO_LABEL_ASCII]

    observations = _observations(parsed)
    values = reported_values(loop.measurements, demo_algorithms())
    assert {v.key for v in values} == LV_KEYS | {KEY_HEART_RATE}
    for v in values:
        obx, notes = observations[v.key]
        assert obx.obx_2.to_er7() == "NM"
        assert obx.obx_3.ce_1.to_er7() == v.concept.value
        assert obx.obx_3.ce_3.to_er7() == {"LN": "LN", "SCT": "SCT"}[v.concept.scheme]
        assert float(obx.obx_5.to_er7()) == pytest.approx(v.value)
        assert obx.obx_6.ce_1.to_er7() == v.unit.value and obx.obx_6.ce_3.to_er7() == "UCUM"
        assert obx.obx_11.to_er7() == "P"
        interpretation = interpret(v, source.patient_sex)
        if interpretation is None:  # stroke volume: no range, no flag
            assert obx.obx_7.to_er7() == obx.obx_8.to_er7() == ""
        else:
            (rng,) = interpretation.ranges  # the phantom's sex is known: one range
            assert obx.obx_7.to_er7() == f"{rng.low:g}-{rng.high:g}"
            assert obx.obx_8.to_er7() == interpretation.flag.value
            assert obx.obx_8.to_er7() in {"L", "N", "H"}
        method = obx.obx_17.to_er7()
        if v.method is not None:
            assert method.startswith(f"{v.method.value}^{v.method.meaning}^DCM")
        else:
            assert unescape(method) == f"^{v.method_text}"
        assert notes[0] == f"{v.label}: {v.text}. Method: {v.method_text}."
        assert notes[-1] == DEMO_LABEL_ASCII
    # the two LVEFs share LOINC 18043-0 and are told apart by the sub-id
    sub_ids = {observations[k][0].obx_4.to_er7() for k in (KEY_LVEF_REGRESSION, KEY_LVEF_DISKS)}
    assert sub_ids == {"1", "2"}
    obx, _ = observations[CONCLUSIONS.value]
    assert obx.obx_2.to_er7() == "TX"
    lines = _lines(obx)
    assert lines[0] == DEMO_LABEL_ASCII and "Automated draft for review." in lines


def test_preliminary_then_final_then_amended_update_one_result(loop, peer) -> None:
    preliminary = draft()
    final = preliminary.signed(signature())
    amended = final.amended("Edited: LV dilated.", signature(), "volume wording")
    outcomes = [_send(peer, _oru(loop, report)) for report in (preliminary, final, amended)]
    assert all(o.ok and o.ack_code == "AA" for o in outcomes), outcomes
    assert [r.problem for r in peer.received] == ["", "", ""]
    parsed = [r.message for r in peer.received]

    control_ids = [m.msh.msh_10.to_er7() for m in parsed]
    assert len(set(control_ids)) == 3 and control_ids == [o.control_id for o in outcomes]
    fillers = {_order(m).obr.obr_3.to_er7() for m in parsed} | {
        _order(m).orc.orc_3.to_er7() for m in parsed
    }
    assert fillers == {f"{loop.source.study_instance_uid}^ECHO-AGENT"}
    assert [_order(m).obr.obr_25.to_er7() for m in parsed] == ["P", "F", "C"]
    for m, status in zip(parsed, "PFC", strict=True):
        statuses = {obx.obx_11.to_er7() for obx, _ in _observations(m).values()}
        assert statuses == {status}
    assert _order(parsed[0]).obr.obr_32.to_er7() == ""  # unsigned: no interpreter
    for m in parsed[1:]:
        assert _order(m).obr.obr_32.to_er7() == "&Okafor&Ada&&&Dr"
        assert _order(m).obr.obr_22.to_er7() == "20240816093000+0000"  # the signature time
    text = _joined(_observations(parsed[2])[CONCLUSIONS.value][0].obx_5)
    assert "Edited: LV dilated." in text and "Amended (version 2): volume wording" in text


def test_delimiters_in_names_and_text_are_escaped(loop, peer) -> None:
    source = dataclasses.replace(
        loop.source,
        patient_name="Smith|Jones&Co^Ma~ry\\B",
        patient_id="ID|^&~\\1",
        accession_number="ACC^7|8",
    )
    narrative = "EF | normal ^ & ~ \\ ok\nsecond line \\.br\\ kept\rthird"
    message = _oru(loop, draft(narrative=narrative), source=source)
    plain = _oru(loop)
    assert message.count("\r") == plain.count("\r")  # no value split a segment
    assert (
        "PID|1||ID\\F\\\\S\\\\T\\\\R\\\\E\\1^^^^MR||Smith\\F\\Jones\\T\\Co^Ma\\R\\ry\\E\\B"
        in message
    )
    assert _send(peer, message).ok
    (received,) = peer.received
    assert received.problem == ""
    pid = _pid(received.message)
    assert unescape(pid.pid_5.xpn_1.to_er7()) == "Smith|Jones&Co"
    assert unescape(pid.pid_5.xpn_2.to_er7()) == "Ma~ry\\B"
    assert unescape(pid.pid_3.cx_1.to_er7()) == "ID|^&~\\1"
    assert unescape(_order(received.message).obr.obr_18.to_er7()) == "ACC^7|8"
    lines = _lines(_observations(received.message)[CONCLUSIONS.value][0])
    assert "EF | normal ^ & ~ \\ ok" in lines
    assert "second line \\.br\\ kept third" in lines  # a lone CR is no segment end
    assert unescape(escape("a\\E\\b|c")) == "a\\E\\b|c"


def test_a_loop_without_patient_id_and_name_invents_neither(loop, peer) -> None:
    source = dataclasses.replace(loop.source, patient_id="", patient_name="")
    message = _oru(loop, source=source)
    pid_line = next(s for s in message.split("\r") if s.startswith("PID|"))
    assert pid_line.split("|")[3] == "" and pid_line.split("|")[5] == ""
    outcome = _send(peer, message)
    # a strict receiver cannot file it: AR, which no retry changes
    assert (outcome.ok, outcome.ack_code, outcome.retryable) == (False, "AR", False)
    assert "PID" in outcome.text


# --- the acknowledgment --------------------------------------------------------------------


def test_ae_is_retryable_and_ar_is_permanent(loop, peer) -> None:
    peer.script("AE", "AR")
    error = _send(peer, _oru(loop))
    assert (error.ok, error.ack_code, error.retryable) == (False, "AE", True)
    assert "database unavailable, try again" in error.text
    rejected = _send(peer, _oru(loop))
    assert (rejected.ok, rejected.ack_code, rejected.retryable) == (False, "AR", False)
    assert "unknown patient" in rejected.text
    assert [r.answer for r in peer.received] == ["AE", "AR"]


def test_no_answer_is_a_retryable_timeout(loop, peer) -> None:
    peer.script("silent")
    outcome = _send(peer, _oru(loop), timeout_s=0.5)
    assert (outcome.ok, outcome.ack_code, outcome.retryable) == (False, "", True)
    assert "no acknowledgment" in outcome.text
    # it arrived and parsed; only the answer is missing (the peer may still be validating it
    # when the sender gives up, so wait for it to be recorded)
    deadline = time.monotonic() + 10.0
    while not peer.received and time.monotonic() < deadline:
        time.sleep(0.05)
    (received,) = peer.received
    assert received.problem == ""


def test_an_ack_for_another_control_id_is_no_delivery(loop, peer) -> None:
    peer.script("wrong_id")
    message = _oru(loop)
    outcome = _send(peer, message)
    assert not outcome.ok and outcome.ack_code == "AA" and outcome.retryable
    assert f"not {control_id_of(message)!r}" in outcome.text


def test_a_closed_port_is_a_retryable_failure(loop) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    outcome = send_oru("127.0.0.1", port, _oru(loop), 2.0)
    assert (outcome.ok, outcome.ack_code, outcome.retryable) == (False, "", True)
    assert "127.0.0.1" in outcome.text


# --- the real SonoSite loop --------------------------------------------------------------


def test_real_sonosite_loop_sends_its_ef_and_withholds_the_rest(peer) -> None:
    """pydicom's real SonoSite A4C loop through the node's analysis with the demo networks:
    the LV is found and the regression EF sent as a number; the method-of-disks EF (no whole
    beat) and the volumes (calibration region outside the rescaled image) are OBX status X
    without a value, each with an NTE saying why; the receiver validates the message."""
    import pydicom
    from pydicom import examples

    from inference.analyze import analyse
    from inference.model_cache import load_models
    from pacs_agent.analysis import model_settings
    from pacs_agent.config import Config
    from pacs_agent.outputs import algorithms_for
    from reporting.types import SourceLoop

    path = Path(examples.get_path("ybr_color"))
    with tempfile.TemporaryDirectory() as home:
        config = Config(home=home)
        models = load_models(model_settings(config))
        result = analyse(path, models, all_clip_stride=config.models.all_clip_stride)
    measurements = result.analysis.measurements
    source = SourceLoop.from_dataset(pydicom.dcmread(path, stop_before_pixels=True))
    message = build_oru(source, measurements, algorithms_for(models), draft(models.demo))
    assert _send(peer, message).ok
    (received,) = peer.received
    assert received.problem == ""
    pid = _pid(received.message)
    assert (pid.pid_3.cx_1.to_er7(), pid.pid_5.xpn_1.to_er7()) == ("204", "PLA")
    assert pid.pid_7.to_er7() == pid.pid_8.to_er7() == ""  # empty in the header: stays empty

    observations = _observations(received.message)
    assert set(observations) >= LV_KEYS
    published, _ = observations[KEY_LVEF_REGRESSION]
    assert published.obx_11.to_er7() != "X" and published.obx_2.to_er7() == "NM"
    assert float(published.obx_5.to_er7()) == pytest.approx(measurements.ef_percent, abs=0.05)
    for key in LV_KEYS - {KEY_LVEF_REGRESSION}:
        obx, notes = observations[key]
        assert obx.obx_5.to_er7() == "" and obx.obx_2.to_er7() == ""
        assert obx.obx_11.to_er7() == "X"  # table 0085: results cannot be obtained
        assert obx.obx_8.to_er7() == obx.obx_7.to_er7() == ""
        assert "not measurable" in notes[0] and "manual measurement required" in notes[0]
        assert not re.search(r"\d+\.\d", notes[0]), notes[0]
    quality = observations[codes.LOOP_QUALITY_SCORE.value][0]
    # the loop's own score (below 0.5 here: the systolic edge check flags the loop though it
    # withholds nothing the loop gave)
    assert float(quality.obx_5.to_er7()) == pytest.approx(measurements.quality_score, abs=0.001)
    assert 0.0 < float(quality.obx_5.to_er7()) <= 1.0
    text = _joined(observations[CONCLUSIONS.value][0].obx_5)
    assert "LVEF (method of disks) not measurable: no cardiac cycle" in text
    assert not re.search(r"\d+\.\d mL", text)
    assert all(len(line) <= 80 for line in _lines(observations[CONCLUSIONS.value][0]))


# --- configuration ------------------------------------------------------------------------


def test_hl7_destinations_are_an_array_of_tables(tmp_path) -> None:
    path = tmp_path / "echo-agent.toml"
    path.write_text(
        '[[hl7_destinations]]\nname = "ehr"\nhost = "127.0.0.1"\nport = 6661\n'
        'timeout_s = 5\nreceiving_application = "EPIC"\nreceiving_facility = "MAIN"\n'
        '[[hl7_destinations]]\nname = "engine"\nhost = "10.0.0.9"\n'
    )
    config = load_config(path, environ={})
    assert [(d.name, d.host, d.port, d.timeout_s, d.receiving_application)
            for d in config.hl7_destinations] == [
        ("ehr", "127.0.0.1", 6661, 5.0, "EPIC"),
        ("engine", "10.0.0.9", 2575, 30.0, ""),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[hl7_destinations]]\nname = "e"\n', r"hl7_destinations\[0\].host must be set"),
        ('[[hl7_destinations]]\nname = "e"\nhost = "h"\n' * 2, "used twice"),
        ('[[hl7_destinations]]\nname = "e"\nhost = "h"\nport = 0\n', "between 1 and 65535"),
        ('[[hl7_destinations]]\nname = "e"\nhost = "h"\ntimeout_s = 0\n', "positive"),
        ('[[hl7_destinations]]\nname = "e"\nhost = "h"\nreceiving_application = "A^B"\n',
         "receiving_application"),
        ('[[hl7_destinations]]\nname = "e"\nhost = "h"\naet = "X"\n',
         r"unknown key 'hl7_destinations\[0\].aet'"),
    ],
)  # fmt: skip
def test_hl7_destination_mistakes_name_the_key(tmp_path, toml: str, message: str) -> None:
    path = tmp_path / "echo-agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})
