"""``keyops dev up|down|status|env``: the embedded local stack (OpenBao + SoftHSM2).

    keyops dev up              # start (or resume) the stack under ./.keyops
    keyops dev up --ha         # three OpenBao nodes with integrated raft instead (in a folder of its own)
    eval "$(keyops dev env)"   # point this shell at it; prints no secret
    keyops dev status          # exit 0 when up, 3 when not running
    keyops dev down            # stop the bao server this stack started

Errors are ``DevStackError`` (a ``KeyopsError``); the dispatcher in
``keyops.cli.main`` turns them into messages and exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from keyops.dev.cluster import NODES, open_stack
from keyops.dev.stack import DEFAULT_PORT, PORT_ENV, STATE_DIR_ENV, DevStack, default_state_dir

#: Exit code of ``keyops dev status`` when the stack is not up.
EXIT_NOT_RUNNING = 3


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``dev`` and its subcommands on the dispatcher's subparsers."""
    dev = subparsers.add_parser(
        "dev", help="run the embedded local stack (OpenBao + SoftHSM2)",
        description="Run a local OpenBao server and SoftHSM2 token with on-disk state in a project folder "
                    f"(./.keyops, or ${STATE_DIR_ENV}).")
    dev.set_defaults(func=lambda args: _usage(dev))
    sub = dev.add_subparsers(dest="dev_command", metavar="{up,down,status,env}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", metavar="DIR", default=None,
                       help=f"state folder (default: ${STATE_DIR_ENV} or ./.keyops)")

    up = sub.add_parser("up", help="start, initialise and unseal the stack (idempotent)")
    common(up)
    up.add_argument("--port", type=int, default=None,
                    help=f"API port at the first start (default: ${PORT_ENV} or {DEFAULT_PORT}, "
                         "a free one when taken); later starts reuse the remembered port")
    up.add_argument("--ha", action="store_true",
                    help=f"a cluster of {NODES} OpenBao nodes with integrated raft storage, joined and unsealed, "
                         "each on its own ports (the state folder remembers it: later commands need no --ha)")
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the bao server this stack started")
    common(down)
    down.add_argument("--json", action="store_true", help="print the result as JSON")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="tell what runs; exit 0 when up, 3 when not")
    common(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status, data_output=True, exit_3_is_status=True)

    env = sub.add_parser("env", help='print export lines for eval "$(keyops dev env)" (no secrets)')
    common(env)
    env.set_defaults(func=cmd_env, data_output=True)
    return dev


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _stack(args: argparse.Namespace, port: int | None = None, ha: bool = False) -> DevStack:
    """The stack of the state folder: the HA stack when it holds one (or ``--ha`` asks), else the single server."""
    state_dir = args.state_dir or default_state_dir(os.environ)
    return open_stack(state_dir, port=port, ha=ha)


def cmd_up(args: argparse.Namespace) -> int:
    stack = _stack(args, port=args.port, ha=args.ha)
    info = stack.up()
    if args.json:
        answer = {"version": 1, "state_dir": str(info.state_dir), "addr": info.addr, "pid": info.pid,
                  "port": info.port, "cluster_port": info.cluster_port,
                  "already_running": info.already_running, "initialized_now": info.initialized_now,
                  "unsealed_now": info.unsealed_now, "token_created": info.token_created,
                  "key_created": info.key_created, "master_key_label": info.master_key_label,
                  "seconds": info.seconds}
        if info.nodes:
            answer["nodes"] = list(info.nodes)
        print(json.dumps(answer, indent=2))
        return 0
    if info.already_running:
        head = f"dev stack already running at {info.addr} (pid {info.pid})"
        if info.unsealed_now:
            head += "; unsealed it"
    else:
        how = "initialised and started" if info.initialized_now else "restarted"
        head = f"dev stack {how} at {info.addr} (pid {info.pid}) in {info.seconds:.1f} s"
    print(head)
    if info.nodes:
        print(f"  nodes:      {', '.join(info.nodes)} (integrated raft; keyops follows the active one)")
    print(f"  state:      {info.state_dir}")
    print(f"  mounts:     keyops/ (kv v2), transit/; audit log {stack.bao_audit_log}")
    print(f"  audit:      {stack.keyops_audit_log}, keyed by transit/keyops_audit, anchored in keyops/audit/head/")
    hsm = "created" if info.token_created else "present"
    key = info.master_key_label or "none yet (made with the first 'keyops tenant create')"
    print(f"  HSM token:  keyops ({hsm}); master key {key}")
    print('  shell:      eval "$(keyops dev env' + _state_dir_flag(args) + ')"')
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stack = _stack(args)
    result = stack.down()
    if args.json:
        print(json.dumps({"version": 1, "stopped": result.stopped, "pid": result.pid,
                          "stale_pid_file": result.stale_pid_file, "killed": result.killed}, indent=2))
    elif result.stopped:
        print(f"stopped bao (pid {result.pid}){' with SIGKILL' if result.killed else ''}; "
              f"state kept in {stack.state_dir}")
    elif result.stale_pid_file:
        print(f"not running; removed a stale PID file (pid {result.pid} is not this stack's bao)")
    else:
        print("not running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    stack = _stack(args)
    st = stack.status()
    code = 0 if st.up else EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps({"version": 1, **st.as_dict()}, indent=2))
        return code
    if st.running:
        seal = "sealed" if st.sealed else "unsealed"
        init = "initialised" if st.initialized else "not initialised"
        print(f"bao:        running at {st.addr} (pid {st.pid}), {init}, {seal}")
    else:
        print(f"bao:        not running (state {st.state_dir})")
    for node in st.nodes:
        pid = f" (pid {node['pid']})" if node["pid"] else ""
        print(f"  node {node['node']}:   {node['addr']}{pid}, {node['role']}")
    print(f"HSM token:  {'present' if st.hsm_token_present else 'missing'}")
    if st.master_key_label:
        print(f"master key: {st.master_key_label} {'present' if st.master_key_present else 'missing'}")
    else:
        print("master key: none registered yet (made with the first 'keyops tenant create')")
    return code


def cmd_env(args: argparse.Namespace) -> int:
    sys.stdout.write(_stack(args).shell_exports())
    return 0


def _state_dir_flag(args: argparse.Namespace) -> str:
    if args.state_dir:
        return f" --state-dir {shlex.quote(str(args.state_dir))}"
    return ""
