"""Unit tests of the node agent's parts that need no bus: env expansion, back-off, phases, pod
CIDRs and addresses, log files, the checkpoint, cgroup detection, /proc identity, probes."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from schemas import Condition, Pod, Service
from schemas.pod import Container, EnvVar, Probe
from services.nodeagent.backoff import Backoff
from services.nodeagent.cgroups import Cgroups, _parse_mountinfo, _parse_self_cgroup
from services.nodeagent.checkpoint import Checkpoint
from services.nodeagent.environment import (ConfigError, PodContext, container_argv, container_env, expand,
                                            mapping_for, service_env)
from services.nodeagent.logfiles import LogFiles, read_tail
from services.nodeagent.network import NoAddresses, PodAddresses, choose_pod_cidr
from services.nodeagent.podstate import ContainerRecord, PodCheckpoint, PodRecord, Terminated
from services.nodeagent.probes import ProbeTarget, run_probe
from services.nodeagent.resources import admit, container_limits
from services.nodeagent.runtime import Launch
from services.nodeagent.runtime import procfs
from services.nodeagent.runtime.process import ProcessRuntime
from services.nodeagent.sandbox import Sandboxes
from services.nodeagent.status import compute_phase, pod_status
from requirements import has_cgroup_v1, is_root, need


def pod(spec: dict, name: str = "p", uid: str = "u1") -> Pod:
    return msgspec.convert({"metadata": {"name": name, "namespace": "default", "uid": uid}, "spec": spec}, Pod)


# ---- $(VAR) expansion and environment ----------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("$(VAR)", "value"), ("x-$(VAR)-y", "x-value-y"), ("$(UNKNOWN)", "$(UNKNOWN)"), ("$$(VAR)", "$(VAR)"),
    ("$$$(VAR)", "$value"), ("$(VAR", "$(VAR"), ("$VAR", "$VAR"), ("$", "$"), ("$()", "$()"),
    ("$(VAR)$(VAR)", "valuevalue"), ("a$$b", "a$b"), ("", ""),
])
def test_expansion_follows_kubernetes(text, expected):
    assert expand(text, mapping_for({"VAR": "value"})) == expected


def test_container_env_orders_and_expands_like_kubernetes():
    p = pod({"nodeName": "n1", "containers": [{"name": "c", "command": ["echo", "$(GREETING)", "$(POD_IP)"],
                                               "args": ["$$(LITERAL)"],
                                               "resources": {"limits": {"memory": "64Mi"}},
                                               "env": [{"name": "A", "value": "a"},
                                                       {"name": "GREETING", "value": "hi-$(A)-$(POD_NAME)-$(B)"},
                                                       {"name": "B", "value": "b"},
                                                       {"name": "MEM", "valueFrom": {"resourceFieldRef": {
                                                           "resource": "limits.memory", "divisor": "1Mi"}}},
                                                       {"name": "LBL", "valueFrom": {"fieldRef": {
                                                           "fieldPath": "metadata.labels['app']"}}},
                                                       {"name": "OPT", "valueFrom": {"configMapKeyRef": {
                                                           "name": "x", "key": "y", "optional": True}}}]}]})
    p.metadata.labels["app"] = "web"
    svc = msgspec.convert({"metadata": {"name": "my-db", "namespace": "default"},
                           "spec": {"clusterIP": "127.200.0.5", "ports": [{"port": 5432, "name": "pg"}]}}, Service)
    other = msgspec.convert({"metadata": {"name": "elsewhere", "namespace": "other"},
                             "spec": {"clusterIP": "127.200.0.6", "ports": [{"port": 1}]}}, Service)
    ctx = PodContext(pod=p, node_name="n1", pod_ip="127.64.0.2", host_ip="127.64.0.1", sandbox="/sb",
                     services=[svc, other])
    c = p.spec.containers[0]
    env = container_env(ctx, c, {"data": "/sb/volumes/data"})
    assert env["GREETING"] == "hi-a-p-$(B)"  # B is defined later: not expanded, as in Kubernetes
    assert env["MEM"] == "64" and env["LBL"] == "web" and "OPT" not in env
    assert env["POD_IP"] == "127.64.0.2" and env["NODE_NAME"] == "n1" and env["POD_NAMESPACE"] == "default"
    assert env["MY_DB_SERVICE_HOST"] == "127.200.0.5" and env["MY_DB_SERVICE_PORT_PG"] == "5432"
    assert env["MY_DB_PORT_5432_TCP_ADDR"] == "127.200.0.5" and "ELSEWHERE_SERVICE_HOST" not in env
    assert env["FLOTILLA_VOLUME_DATA"] == "/sb/volumes/data"
    assert container_argv(c, env) == ["echo", "hi-a-p-$(B)", "127.64.0.2", "$(LITERAL)"]
    p.spec.enable_service_links = False
    assert "MY_DB_SERVICE_HOST" not in container_env(ctx, c, {})
    c.env.append(msgspec.convert({"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}, EnvVar))
    with pytest.raises(ConfigError, match='secret "s" not found'):
        container_env(ctx, c, {})


def test_service_env_skips_headless_services():
    headless = msgspec.convert({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
                               Service)
    assert service_env([headless]) == {}


# ---- back-off, phases, admission ---------------------------------------------------------------------

def test_backoff_is_immediate_then_doubles_to_the_cap_and_resets():
    b = Backoff(base=10, cap=40)
    c = ContainerRecord(name="c")
    now = 1000.0
    c.exited_at = now
    assert b.remaining(c, now) == 0  # first restart: at once
    waits = []
    for _ in range(5):
        b.step(c, now)               # restart now
        now += 1                     # it crashes a second later
        c.exited_at = now
        waits.append(b.remaining(c, now))
        now += waits[-1]
    assert waits == [10, 20, 40, 40, 40]
    c.exited_at = c.backoff_at + 2 * 40 + 1  # ran longer than twice the cap since its last restart
    assert b.remaining(c, c.exited_at) == 0
    b.step(c, c.exited_at)
    assert c.backoff == 10


def _rec(states: dict[str, ContainerRecord]) -> PodRecord:
    return PodRecord(cp=PodCheckpoint(uid="u1", namespace="default", name="p", ip="127.64.0.2"), containers=states)


def _done(code: int) -> ContainerRecord:
    return ContainerRecord(name="c", state="terminated", reason=None, container_id="x",
                           terminated=Terminated(exit_code=code, reason="Error", finished_at="t"))


@pytest.mark.parametrize("policy,codes,phase", [
    ("Never", [0], "Succeeded"), ("Never", [0, 2], "Failed"), ("OnFailure", [0], "Succeeded"),
    ("OnFailure", [1], "Running"), ("Always", [0], "Running"),
])
def test_phase_of_stopped_containers(policy, codes, phase):
    names = [f"c{i}" for i in range(len(codes))]
    p = pod({"restartPolicy": policy, "containers": [{"name": n, "command": ["x"]} for n in names]})
    rec = _rec({n: _done(code) for n, code in zip(names, codes)})
    assert compute_phase(p, rec) == phase


def test_phase_pending_while_waiting_or_initializing():
    p = pod({"containers": [{"name": "c", "command": ["x"]}], "initContainers": [{"name": "i", "command": ["x"]}]})
    rec = _rec({"i": ContainerRecord(name="i", init=True), "c": ContainerRecord(name="c")})
    assert compute_phase(p, rec) == "Pending"
    rec.containers["i"] = _done(0)
    assert compute_phase(p, rec) == "Pending"  # c waits without having run
    rec.containers["c"] = ContainerRecord(name="c", state="running", reason=None, container_id="y")
    assert compute_phase(p, rec) == "Running"
    p.spec.restart_policy = "Never"
    rec.containers["i"] = _done(1)
    assert compute_phase(p, rec) == "Failed"


def test_status_keeps_transition_times_and_foreign_conditions():
    p = pod({"containers": [{"name": "c", "command": ["x"]}]})
    rec = _rec({"c": ContainerRecord(name="c", state="running", reason=None, container_id="y", started_at="t0")})
    rec.live_of("c").ready = True
    first = pod_status(p, rec, "process", "127.64.0.1")
    assert first.phase == "Running" and [c.type for c in first.conditions][:4] == \
        ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
    p.status = first
    p.status.conditions.append(Condition(type="DisruptionTarget", status="True"))
    time.sleep(1.1)
    second = pod_status(p, rec, "process", "127.64.0.1")
    assert [c.last_transition_time for c in second.conditions] == [c.last_transition_time for c in p.status.conditions]
    assert second.conditions[-1].type == "DisruptionTarget"


def test_admission_rejects_what_does_not_fit():
    small = pod({"containers": [{"name": "c", "command": ["x"], "resources": {"requests": {"cpu": "1500m"}}}]})
    assert admit(small, [], {"cpu": "2", "memory": "1Gi", "pods": "10"}) is None
    reason, message = admit(small, [small], {"cpu": "2", "memory": "1Gi", "pods": "10"})
    assert reason == "OutOfcpu" and "requested: 1500, used: 1500, capacity: 2000" in message
    assert admit(small, [small], {"cpu": "8", "pods": "1"})[0] == "OutOfpods"
    with pytest.raises(ValueError, match="below the minimum"):
        container_limits(msgspec.convert({"name": "c", "resources": {"limits": {"memory": "100Ki"}}}, Container))


# ---- pod CIDRs and addresses -------------------------------------------------------------------------

def test_pod_cidrs_are_free_24s_of_the_pool():
    first = choose_pod_cidr("node-1", set())
    assert first.endswith("/24") and first.startswith("127.")
    second = choose_pod_cidr("node-1", {first})
    assert second != first
    tiny = "127.0.0.0/23"  # 127.0.0.0/24 is never handed out
    assert choose_pod_cidr("x", set(), tiny) == "127.0.1.0/24"
    with pytest.raises(NoAddresses):
        choose_pod_cidr("x", {"127.0.1.0/24"}, tiny)
    assert choose_pod_cidr("y", {"127.0.0.0/16"}, "127.0.0.0/15").startswith("127.1.")


def test_pod_addresses_round_robin_and_reserve():
    ips = PodAddresses("127.64.3.0/24")
    assert ips.node_ip == "127.64.3.1"
    a, b = ips.allocate("a"), ips.allocate("b")
    assert (a, b) == ("127.64.3.2", "127.64.3.3") and ips.allocate("a") == a
    ips.release("a")
    assert ips.allocate("c") == "127.64.3.4"  # a freed address is not reused at once
    assert not ips.reserve("127.64.3.3", "other") and ips.reserve("127.64.3.200", "d")
    assert not ips.reserve("10.0.0.1", "e")
    full = PodAddresses("127.64.4.0/30")
    full.allocate("x")
    with pytest.raises(NoAddresses):
        full.allocate("y")


# ---- logs --------------------------------------------------------------------------------------------

def test_log_rotation_copies_truncates_and_tail_spans_files(tmp_path):
    logs = LogFiles(tmp_path, max_bytes=100, max_files=3)
    path = logs.path("ns", "p", "uid", "c", 0)
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for i in range(30):
            os.write(fd, f"line {i:02d}\n".encode())
            logs.rotate_if_needed(path)
    finally:
        os.close(fd)
    assert len(logs.rotated(path)) == 2 and all(f.stat().st_size <= 110 for f in logs.files(path))
    everything = read_tail(logs.files(path), None).decode().splitlines()
    assert everything == [f"line {i:02d}" for i in range(30 - len(everything), 30)]  # oldest rotated away
    assert read_tail(logs.files(path), 3) == b"line 27\nline 28\nline 29\n"
    assert read_tail(logs.files(path), 0) == b""
    logs.prune("ns", "p", "uid", "c", keep={1})
    assert logs.files(path) == []


# ---- checkpoint --------------------------------------------------------------------------------------

async def test_checkpoint_round_trip(tmp_path):
    cp = Checkpoint(tmp_path / "c.db")
    await cp.open()
    try:
        await cp.set_meta("boot_id", "b1")
        rec = ContainerRecord(name="web", restart_count=3, state="running", reason=None, container_id="abc",
                              pid=1234, start_ticks=999, cgroup_dirs=["/x"],
                              terminated=Terminated(exit_code=1, reason="Error", finished_at="t", restart=2))
        await cp.save_pod(PodCheckpoint(uid="u1", namespace="default", name="p", ip="127.64.0.2", grace=5))
        await cp.save_container("u1", rec)
        rec.restart_count = 4
        await cp.save_container("u1", rec)
        await cp.save_pod(PodCheckpoint(uid="u2", namespace="default", name="q"))
        await cp.delete_pod("u2")
    finally:
        await cp.close()
    again = Checkpoint(tmp_path / "c.db")
    await again.open()
    try:
        assert await again.get_meta("boot_id") == "b1"
        [loaded] = await again.load()
        assert loaded.cp.ip == "127.64.0.2" and loaded.cp.grace == 5
        assert loaded.containers["web"] == rec
    finally:
        await again.close()


# ---- cgroups and /proc -------------------------------------------------------------------------------

HYBRID = """\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
"""


def test_mountinfo_and_self_cgroup_parsing():
    mounts = _parse_mountinfo(HYBRID)
    assert [(m[1], m[2]) for m in mounts] == [("/sys/fs/cgroup/unified", "cgroup2"),
                                             ("/sys/fs/cgroup/memory", "cgroup"),
                                             ("/sys/fs/cgroup/cpu,cpuacct", "cgroup")]
    assert "cpu" in mounts[2][3] and "memory" in mounts[1][3]
    own = _parse_self_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/init.scope\n")
    assert own == {"memory": "/a/b", "cpu": "/", "cpuacct": "/", "": "/init.scope"}


def test_cgroup_detection_on_this_host_never_raises():
    cg = Cgroups.detect("unit-test-node")
    try:
        assert isinstance(cg.message, str) and cg.message
        if os.geteuid() != 0:
            assert not cg.enforced
    finally:
        _remove_bases(cg)


def test_cgroup_limits_are_enforced_where_the_host_allows_it():
    """As root with a v1 memory controller (CI's hybrid layout) limits must be enforced, not recorded."""
    need(is_root(), "cgroup limits need root")
    need(has_cgroup_v1("memory"), "no cgroup v1 memory controller is mounted")
    cg = Cgroups.detect("unit-test-node")
    try:
        assert cg.enforced and "memory" in cg.hierarchies, cg.message
        limits = container_limits(msgspec.convert(
            {"name": "c", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}, Container))
        dirs = cg.create("uid-x", "c", limits)
        assert dirs and all(Path(d).is_dir() for d in dirs)
        memory = next(Path(d) for d in dirs if str(d).startswith(str(cg.hierarchies["memory"].base)))
        assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024
        assert Cgroups.oom_kills(dirs) == 0 and Cgroups.pids(dirs) == set()
        assert cg.remove_pod("uid-x")
    finally:
        _remove_bases(cg)


def _remove_bases(cg: Cgroups) -> None:
    for h in cg.hierarchies.values():
        try:
            h.base.rmdir()
        except OSError:
            pass  # still holding a pod's cgroup of a failed assertion, or already gone


def test_process_identity_and_zombie_exit_status():
    child = subprocess.Popen(["sh", "-c", "exit 7"], env={"FLOTILLA_CONTAINER_ID": "unit-marker", "PATH": os.defpath},
                             start_new_session=True)
    ticks = procfs.start_ticks(child.pid)
    assert ticks is not None
    deadline = time.monotonic() + 5
    while procfs.is_alive(child.pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert procfs.zombie_status(child.pid, ticks) == 7 << 8  # not reaped yet: /proc still has it
    assert procfs.decode_wait_status(7 << 8) == (7, None) and procfs.decode_wait_status(9) == (137, 9)
    assert not procfs.is_alive(child.pid, ticks + 1)
    child.wait()
    sleeper = subprocess.Popen(["sleep", "30"], env={"FLOTILLA_CONTAINER_ID": "unit-marker-2", "PATH": os.defpath},
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 2
        # Popen returns as exec begins (vfork), a moment before /proc shows the new environment.
        while (found := procfs.find_session_leader_with_env("FLOTILLA_CONTAINER_ID=unit-marker-2")) is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert found == (sleeper.pid, procfs.start_ticks(sleeper.pid))
        assert procfs.find_session_leader_with_env("FLOTILLA_CONTAINER_ID=unit-marker") is None
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- the sandbox -------------------------------------------------------------------------------------

def test_sandbox_exposes_volume_mounts_and_refuses_conflicts(tmp_path):
    boxes = Sandboxes(tmp_path)
    p = pod({"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}},
                         {"name": "cm", "configMap": {"name": "x"}}],
             "containers": [{"name": "one", "volumeMounts": [{"name": "a", "mountPath": "/data"},
                                                             {"name": "b", "mountPath": "/var/b", "subPath": "sub"}]},
                            {"name": "two", "volumeMounts": [{"name": "b", "mountPath": "/data"}]},
                            {"name": "three", "volumeMounts": [{"name": "cm", "mountPath": "/cm"}]}]})
    box = boxes.create(p)
    exposed = boxes.mount(p, p.spec.containers[0])
    assert (box / "data").resolve() == (box / "volumes" / "a").resolve()
    assert (box / "var" / "b").resolve() == (box / "volumes" / "b" / "sub").resolve()
    assert exposed == {"a": str(box / "volumes" / "a"), "b": str(box / "volumes" / "b" / "sub")}
    with pytest.raises(ConfigError, match="another volume"):
        boxes.mount(p, p.spec.containers[1])
    with pytest.raises(ConfigError, match="not supported"):
        boxes.mount(p, p.spec.containers[2])
    boxes.remove(p.metadata.uid)
    assert not box.exists()


# ---- probes ------------------------------------------------------------------------------------------

async def test_probes_http_tcp_exec(tmp_path):
    async def handle(reader, writer):
        line = await reader.readline()
        code = 200 if b" /ok " in line else 500
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.64.250.9", 0)
    port = server.sockets[0].getsockname()[1]
    runtime = ProcessRuntime(Cgroups.disabled("n", "unit test"))
    env = {"PATH": os.environ["PATH"]}
    handle_ = await runtime.start(Launch("pid1", "u", "c", ["sleep", "30"], env, tmp_path, tmp_path / "c.log"))
    container = msgspec.convert({"name": "c", "ports": [{"containerPort": port, "name": "web"}]}, Container)
    target = ProbeTarget(runtime=runtime, handle=handle_, container=container, pod_ip="127.64.250.9", env=env,
                         cwd=tmp_path)

    def probe(d: dict) -> Probe:
        return msgspec.convert({"timeoutSeconds": 1, **d}, Probe)

    try:
        async with server:
            assert await run_probe(probe({"httpGet": {"port": "web", "path": "/ok"}}), target) == (True, "")
            ok, msg = await run_probe(probe({"httpGet": {"port": port, "path": "/bad"}}), target)
            assert not ok and msg == "HTTP probe failed with statuscode: 500"
            assert (await run_probe(probe({"tcpSocket": {"port": port}}), target))[0]
            ok, msg = await run_probe(probe({"tcpSocket": {"port": 1}}), target)
            assert not ok and "connection refused" in msg.lower()
            ok, msg = await run_probe(probe({"httpGet": {"port": "nope"}}), target)
            assert not ok and "not a named port" in msg
        assert await run_probe(probe({"exec": {"command": ["sh", "-c", "exit 0"]}}), target) == (True, "")
        ok, msg = await run_probe(probe({"exec": {"command": ["sh", "-c", "echo sick; exit 1"]}}), target)
        assert not ok and msg == "sick"
        ok, msg = await run_probe(probe({"exec": {"command": ["sleep", "5"]}}), target)
        assert not ok and "timed out" in msg
        ok, msg = await run_probe(probe({"exec": {"command": ["no-such-probe-binary"]}}), target)
        assert not ok and "executable file not found" in msg
    finally:
        await runtime.stop(handle_, 1)
        await runtime.wait(handle_)


def test_entry_points_show_help():
    for module in ("services.nodeagent", "services.nodeagent.hollow"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=30,
                             cwd=Path(__file__).resolve().parent.parent)
        assert out.returncode == 0 and "--nats-url" in out.stdout, out.stderr
