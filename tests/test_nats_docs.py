"""Every `nats …` command line in README.md and docs/*.md, run literally with the real natscli
against a live secured `flotilla up`, its output compared with the one the docs show (issue 13: the
docs cannot drift).

What counts as a command (inside ``` blocks only):
- `$ nats …`: the lines after it, up to a blank line, the next `$ ` line or the block's end, are
  the output it shows; `nats …` without `$ `: a command whose output is not shown (it must exit 0
  without a NATS error). A line ending in `\\` continues on the next one.
- `[#n] SUBJECT` followed by a JSON line, anywhere in a block, is a message the `nats sub SUBJECT`
  running in the background of that file (a "terminal 1") shows; it is checked when the file ends.
- `nats sub` and `nats kv watch` never end on their own: `sub` runs in the background until the
  file's last command, `kv watch` until its shown lines have all appeared (or STREAM_SECONDS pass).

The comparison is by shape, because resource versions, uids and times differ on every run:
- a JSON line (possibly trimmed with `…`): the same `type`, `kind`, `code` and `reason` (the first
  of each on the line), and the `message` too unless it holds a number of two digits or more
  (versions, sizes, ids) or a `…`;
- a table row (`│ a │ b │`): the first row shown (the header) as it is, every further row by its
  name (its first cell with a letter in it that is not a random service instance id);
- any other line: the same text once digits are blanked out (times, revisions, sizes), up to
  the first `…` or `{`.
Every shown line must match some line of the real output.

How the commands are made runnable (substitution table, kept small):
- SUBSTITUTIONS: text replaced in the command line before it is split like a shell would
  (`~/.local/state/flotilla/up` is the default state dir the docs name: the test's own is used);
- STDIN_FILES: `< FILE` on a command line reads a body the test generates (bodies over the 128 KiB
  a single argv word may have on Linux cannot be given inline).

The objects the examples refer to come from SETUP: before a command whose text contains the key,
the listed requests are sent (as admin, with the CLI too), in document order. The selected nats
context is `flotilla-local` (the admin), so bare `nats …` lines reach the cluster.
"""
from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import msgspec

from natscli import Streaming, need_nats, run_nats
from test_up import READY, running_up

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_TIMEOUT = 30.0  # a command that has not answered by then is tried once more, then fails
STREAM_SECONDS = 15.0   # how long a `kv watch` may take to show its lines
STATE_DIR_IN_DOCS = "~/.local/state/flotilla/up"

POD = {"containers": [{"name": "web", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}


def big_pod(total: int) -> str:
    """A pod whose JSON is about `total` bytes (one long annotation)."""
    body = {"metadata": {"name": "big", "annotations": {"x": ""}}, "spec": POD}
    body["metadata"]["annotations"]["x"] = "a" * (total - len(json.dumps(body)))
    return json.dumps(body)


STDIN_FILES = {
    "big-pod.json": lambda: big_pod(1_700_000),
    "big-body.json": lambda: big_pod(9_000_000),
}

# Before the first command containing the key (in the file named first): these (subject, body)
# requests. Why each exists is said beside it; everything else the examples use they make themselves.
SETUP: list[tuple[str, str, list[tuple[str, dict]]]] = [
    # README shows web-1 (deploy/examples/pod.yaml in the quick start)
    ("README.md", "req flo.api.v1.pods.get", [
        ("flo.api.v1.pods.create", {"metadata": {"name": "web-1", "labels": {"app": "web"}}, "spec": POD})]),
    # api.md starts from an empty default namespace: web-1 is created by its own example; web-3
    # is the pod its `kv get` shows (scheduled, bound to a node)
    ("api.md", "widgets.get", [
        ("flo.api.v1.pods.delete", {"name": "web-1", "gracePeriodSeconds": 0}),
        ("flo.api.v1.pods.create", {"metadata": {"name": "web-3", "labels": {"app": "web"}}, "spec": POD})]),
    ("api.md", "namespaces.update", [("flo.api.v1.namespaces.create", {"metadata": {"name": "team-a"}})]),
    # the Service a finalizer holds, and s2 (whose uid the delete precondition gets wrong)
    ("api.md", """services.delete '{"namespace":"default","name":"web"}'""", [
        ("flo.api.v1.services.create", {"metadata": {"name": "web", "finalizers": ["example.com/hold"]},
                                        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        ("flo.api.v1.services.create", {"metadata": {"name": "s2"}, "spec": {"ports": [{"port": 80}]}})]),
    # bind needs an unscheduled web-1: a node selector no node matches keeps the scheduler off it
    # the pod the forced delete removes
    ("api.md", "web-4\",\"gracePeriodSeconds\":0", [
        ("flo.api.v1.pods.create", {"metadata": {"name": "web-4", "labels": {"app": "web"}}, "spec": POD})]),
    ("api.md", "pods.bind", [
        ("wait-gone", {"name": "web-1"}),  # its graceful delete above ends when its node agent confirms
        ("flo.api.v1.pods.create", {"metadata": {"name": "web-1", "labels": {"app": "web"}},
                                    "spec": {**POD, "nodeSelector": {"example.com/none": "x"}}})]),
    # the ReplicaSet scale acts on (its own labels: it adopts none of the examples' pods)
    ("api.md", "replicasets.scale", [
        ("flo.api.v1.replicasets.create", {
            "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web-rs"}},
                     "template": {"metadata": {"labels": {"app": "web-rs"}}, "spec": POD}}})]),
    # node-1 may not read a pod bound to node-2
    ("api.md", "node-1.pods.get", [
        ("flo.api.v1.namespaces.create", {"metadata": {"name": "team-b"}}),
        ("flo.api.v1.pods.create", {"metadata": {"name": "web-2", "namespace": "team-b"},
                                    "spec": {**POD, "nodeName": "node-2"}})]),
]


class Command(msgspec.Struct):
    doc: str        # file name relative to the repository
    line: int       # 1-based line of the command in that file
    text: str       # as written (continuations joined)
    shown: list[str] = []  # the output lines shown right under it (msgspec copies the default)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


class Doc(msgspec.Struct):
    path: str
    commands: list[Command]
    sub_messages: list[tuple[int, str, str]]  # (line, subject, JSON line) shown as a `nats sub`'s


SUB_HEADER = re.compile(r'^\[#\d+\] Received on "([^"]+)"')


def extract(path: Path) -> Doc:
    rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    lines = path.read_text().splitlines()
    commands: list[Command] = []
    subs: list[tuple[int, str, str]] = []
    in_block = False
    current: Command | None = None
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block, current = not in_block, None
            i += 1
            continue
        if not in_block:
            i += 1
            continue
        start = i
        text = stripped
        while text.endswith("\\") and i + 1 < len(lines):  # a shell continuation
            i += 1
            text = text[:-1].rstrip() + " " + lines[i].strip()
        header = SUB_HEADER.match(text)
        if header and i + 1 < len(lines):
            subs.append((start + 1, header.group(1), lines[i + 1].strip()))
            i += 2
            continue
        if text.startswith("$ "):
            current = None
            if text.startswith("$ nats "):
                current = Command(rel, start + 1, text[2:])
                commands.append(current)
        elif text.startswith("nats "):
            commands.append(Command(rel, start + 1, text))
            current = None
        elif not text:
            current = None
        elif current is not None:
            current.shown.append(text)
        i += 1
    return Doc(rel, commands, subs)


# --- shapes -------------------------------------------------------------------------------------

FIRST = {key: re.compile(rf'"{key}":"((?:[^"\\]|\\.)*)"') for key in ("type", "kind", "reason", "message")}
CODE = re.compile(r'"code":(\d+)')


def json_shape(line: str) -> dict[str, str]:
    shape = {key: m.group(1) for key, rx in FIRST.items() if (m := rx.search(line))}
    if m := CODE.search(line):
        shape["code"] = m.group(1)
    return shape


def is_json(line: str) -> bool:
    return line.startswith(("{", "[{"))


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│").split("│")]


NUID = re.compile(r"^[A-Za-z0-9]{22}$")  # a service instance's id, new on every start


def row_name(row: list[str]) -> str | None:
    """What names a table row: its first cell with a letter in it that is not an instance id."""
    return next((c for c in row if re.search(r"[A-Za-z]", c) and not NUID.match(c)), None)


def text_shape(line: str) -> str:
    cut = min((p for p in (line.find("…"), line.find("{")) if p >= 0), default=len(line))
    return " ".join(re.sub(r"\d+", "#", line[:cut]).split())


def mismatches(shown: list[str], actual: list[str]) -> list[str]:
    """The shown lines no line of `actual` matches (by shape, see the module docstring)."""
    actual = [a.strip() for a in actual if a.strip()]
    json_actual = [json_shape(a) for a in actual if is_json(a)]
    rows = [cells(a) for a in actual if "│" in a]
    texts = [text_shape(a) for a in actual]
    missing = []
    header_seen = False
    for line in shown:
        if is_json(line):
            want = json_shape(line)
            if "message" in want and re.search(r"\d\d|…", want["message"]):  # run-specific or trimmed
                del want["message"]
            if not any(all(got.get(k) == v for k, v in want.items()) for got in json_actual):
                missing.append(line)
        elif "│" in line:
            row = cells(line)
            if not header_seen:
                header_seen = True
                ok = row in rows
            else:
                ok = any(row_name(r) == row_name(row) for r in rows)
            if not ok:
                missing.append(line)
        elif line[:1] in "╭├╰─":
            continue
        else:
            want_text = text_shape(line)
            if want_text and not any(t.startswith(want_text) for t in texts):
                missing.append(line)
    return missing


# --- running ------------------------------------------------------------------------------------

NATS_ERROR = re.compile(r"nats: error|Unexpected NATS error|[Pp]ermissions [Vv]iolation|no responders")
VALUE_FLAGS = {"--context", "-H", "--header", "--timeout", "-s", "--server", "--creds", "--reply", "--replies",
               "--reply-timeout", "--count", "--inbox-prefix", "--description"}


def words(cmd: Command, state_dir: Path) -> tuple[list[str], str | None]:
    """argv after `nats`, and the stdin body of a `< FILE` redirection."""
    argv = shlex.split(cmd.text.replace(STATE_DIR_IN_DOCS, str(state_dir)), comments=True)[1:]
    stdin = None
    if "<" in argv:
        at = argv.index("<")
        stdin = STDIN_FILES[argv[at + 1]]()
        del argv[at:at + 2]
    return argv, stdin


def subcommand(argv: list[str]) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in VALUE_FLAGS:
            skip = True
        elif not word.startswith("-"):
            out.append(word)
    return out


class Run:
    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir, self.env = state_dir, env
        self.failures: list[str] = []
        self.ran = 0
        self.set_up: set[int] = set()

    def request(self, subject: str, body: dict) -> None:
        if subject == "wait-gone":  # not a request: wait until the pod named is gone
            deadline = time.monotonic() + 60
            while '"code":404' not in run_nats(["req", "flo.api.v1.pods.get", json.dumps(body)], self.env,
                                              timeout=COMMAND_TIMEOUT).stdout:
                assert time.monotonic() < deadline, f"pod {body} still there after 60 s"
                time.sleep(0.2)
            return
        done = run_nats(["req", subject, json.dumps(body)], self.env, timeout=COMMAND_TIMEOUT)
        assert done.returncode == 0 and '"kind":"Status"' not in done.stdout.replace(" ", "")[:20], \
            f"setup {subject} {body}: {done}"

    def once(self, argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return run_nats(argv, self.env, timeout=COMMAND_TIMEOUT, stdin=stdin)
        except subprocess.TimeoutExpired:
            return run_nats(argv, self.env, timeout=COMMAND_TIMEOUT, stdin=stdin)

    def fail(self, cmd: Command, why: str) -> None:
        self.failures.append(f"{cmd.where}: `{cmd.text}`: {why}")

    def doc(self, doc: Doc) -> None:
        subs: dict[str, Streaming] = {}
        try:
            for cmd in doc.commands:
                for n, (file, key, steps) in enumerate(SETUP):
                    if doc.path.endswith(file) and key in cmd.text and n not in self.set_up:
                        self.set_up.add(n)
                        for subject, body in steps:
                            self.request(subject, body)
                self.ran += 1
                try:
                    argv, stdin = words(cmd, self.state_dir)
                except (ValueError, KeyError) as e:
                    self.fail(cmd, f"cannot be run literally: {e!r}")
                    continue
                sub = subcommand(argv)
                if sub[:1] == ["sub"]:
                    subs[sub[1]] = Streaming(argv, self.env)
                    # only what arrives after the subscription is made can be shown
                    subs[sub[1]].until(lambda ls: any("Subscribing on" in l for l in ls), timeout=COMMAND_TIMEOUT)
                    # `nats sub` prints that line before its SUB reaches the server, and a literal docs
                    # command leaves no room for a probe subject (tests/natscli.py until_probed): give
                    # the SUB a moment to land before the commands whose messages it must see.
                    time.sleep(0.5)
                    continue
                if sub[:2] == ["kv", "watch"]:
                    self.stream(cmd, argv)
                    continue
                try:
                    done = self.once(argv, stdin)
                except subprocess.TimeoutExpired:
                    self.fail(cmd, f"no answer in {COMMAND_TIMEOUT} s, twice")
                    continue
                if done.returncode != 0 or NATS_ERROR.search(done.stderr):
                    if not mismatches(cmd.shown, (done.stdout + done.stderr).splitlines()) and cmd.shown \
                            and any(NATS_ERROR.search(s) for s in cmd.shown):
                        continue  # a documented failure, failing as documented
                    self.fail(cmd, f"exit {done.returncode}: {done.stderr.strip()[-400:]}")
                    continue
                if missing := mismatches(cmd.shown, done.stdout.splitlines()):
                    self.fail(cmd, f"shown output {missing} not in the real one:\n{done.stdout[-1500:]}")
        finally:
            time.sleep(0.5)  # the last messages of a background sub
            for subject, stream in subs.items():
                stream.stop()
                got = [l for l in stream.lines if is_json(l)]
                for line, subj, shown in doc.sub_messages:
                    if subj == subject and mismatches([shown], got):
                        self.failures.append(f"{doc.path}:{line}: `nats sub {subject}` never showed "
                                             f"{shown[:160]}; it showed:\n" + "\n".join(g[:160] for g in got))
            for line, subj, _ in doc.sub_messages:
                if subj not in subs:
                    self.failures.append(f"{doc.path}:{line}: a message on {subj} but no `nats sub {subj}` runs")

    def stream(self, cmd: Command, argv: list[str]) -> None:
        with Streaming(argv, self.env) as stream:
            try:
                stream.until(lambda ls: not mismatches(cmd.shown, ls) and len(ls) > 0, timeout=STREAM_SECONDS)
            except AssertionError:
                self.fail(cmd, f"shown output {mismatches(cmd.shown, stream.lines)} not in the real one:\n"
                          + "\n".join(stream.lines[-30:]))
                return
            if bad := [l for l in stream.lines if NATS_ERROR.search(l)]:
                self.fail(cmd, f"{bad}")


# --- tests --------------------------------------------------------------------------------------

def all_commands() -> list[Command]:
    return [c for path in DOCS for c in extract(path).commands]


def test_the_extractor_finds_the_commands() -> None:
    commands = all_commands()
    readme = [c for c in commands if c.doc == "README.md"]
    assert [c.text.split()[3:5] for c in readme] == [["req", "flo.api.v1.pods.get"], ["kv", "get"],
                                                      ["kv", "watch"], ["micro", "ls"]], readme
    widgets = next(c for c in commands if "widgets.get" in c.text)
    assert widgets.shown and json_shape(widgets.shown[0]) == {
        "kind": "Status", "code": "404", "reason": "NotFound",
        "message": "the server could not find the requested resource 'widgets'"}
    assert len(commands) >= 80, len(commands)


def test_the_extractor_rules(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("""nats req outside.a.block '{}'
```
$ nats req a.b '{}'
{"kind":"Pod"}

$ nats req -H 'X: y' \\
    c.d '{}'
[#1] Received on "_INBOX.me"
{"type":"ACK"}
$ flotilla get pods
NAME
nats kv ls flotilla
```
""")
    doc = extract(md)
    assert [(c.line, c.text, c.shown) for c in doc.commands] == [
        (3, "nats req a.b '{}'", ['{"kind":"Pod"}']), (6, "nats req -H 'X: y' c.d '{}'", []),
        (12, "nats kv ls flotilla", [])]
    assert doc.sub_messages == [(8, "_INBOX.me", '{"type":"ACK"}')]


def test_the_shape_check_tells_outputs_apart() -> None:
    shown = ['{"kind":"Status","code":404,"reason":"NotFound","message":"pods \\"web-1\\" not found"}']
    assert mismatches(shown, ['{"kind":"Status","code":404,"reason":"NotFound","message":"pods \\"web-1\\" not found"}']) == []
    sized = ['{"kind":"Status","code":413,"reason":"TooLarge","message":"request entity too large: 1700000 bytes"}']
    assert mismatches(sized, ['{"kind":"Status","code":413,"reason":"TooLarge","message":"request entity too large: 1700001 bytes"}']) == []
    assert mismatches(shown, ['{"kind":"Status","code":400,"reason":"BadRequest","message":"x"}']) == shown
    assert mismatches(shown, ['{"kind":"Status","code":404,"reason":"NotFound","message":"pods \\"x\\" not found"}']) == shown
    trimmed = ['{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-1",…},…}']
    assert mismatches(trimmed, ['{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-2"}}']) == []
    assert mismatches(trimmed, ['{"kind":"Service"}']) == trimmed
    table = ["│ Name               │ Version │", "│ flotilla-apiserver │ 0.1.0   │"]
    assert mismatches(table, ["│ Name │ Version │", "│ flotilla-apiserver │ 0.2.0 │"]) == []
    assert mismatches(table, ["│ Name │ Version │", "│ flotilla-gc │ │"]) == table[1:]
    stats = ["│ ID │ Endpoint │", "│ HcNReQQu1b0FmywShqf43j │ namespaces │", "│ │ pods │"]
    assert mismatches(stats, ["│ ID │ Endpoint │", "│ Q2NReQQu1b0FmywShqf43x │ namespaces │", "│ │ pods │"]) == []
    assert mismatches(stats, ["│ ID │ Endpoint │", "│ Q2NReQQu1b0FmywShqf43x │ namespaces │"]) == stats[2:]
    header = ["flotilla > pods.default.web-3 revision: 27 created @ 2026-11-29 19:25:22"]
    assert mismatches(header, ["flotilla > pods.default.web-3 revision: 538 created @ 2026-12-04 04:17:49"]) == []
    assert mismatches(header, ["flotilla > pods.default.web-3 revision: 538 deleted @ 2026-12-04 04:17:49"]) == header


async def test_every_nats_command_in_the_docs_runs_as_shown(tmp_path: Path) -> None:
    need_nats()
    async with running_up(tmp_path, "--nodes", "2") as up:
        await up.line_starting(READY, timeout=120)
        env = {"XDG_CONFIG_HOME": str(up.config_home)}
        selected = run_nats(["context", "select", "flotilla-local"], env)
        assert selected.returncode == 0, selected
        run = Run(up.state_dir, env)
        started = time.monotonic()
        for path in DOCS:
            await asyncio.to_thread(run.doc, extract(path))
        print(f"{run.ran} nats commands from {len(DOCS)} files in {time.monotonic() - started:.0f} s")
        assert not run.failures, f"{len(run.failures)} of {run.ran} doc commands failed:\n\n" + "\n\n".join(run.failures)
