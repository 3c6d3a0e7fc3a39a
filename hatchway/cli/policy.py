"""``hatchway policy …``: the policy engine from the command line, for people and for CI."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import IO, Any

import click

from hatchway.cli.policybatch import Evaluator, evaluate_stream
from hatchway.iam import (
    MalformedPolicyDocument,
    PolicyError,
    PolicyKind,
    PolicySet,
    Principal,
    make_context,
    parse_policy,
)
from hatchway.iam.lint import lint_policies
from hatchway.iam.simulate import ContextEntry, SimulationInput, simulate_custom_policy
from hatchway.ssm import StartSessionMode, authorize_start_session, target_arn
from hatchway.ssm.arns import InvalidTarget

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"


@click.group()
def policy() -> None:
    """Evaluate, simulate, explain and lint IAM policies offline."""


# --- shared helpers ------------------------------------------------------------------------


def _policy_arg(value: str) -> str:
    """AWS CLI convention: ``file://path`` reads a file, anything else is the text itself."""
    if value.startswith("file://"):
        with open(value[len("file://") :], encoding="utf-8") as f:
            return f.read()
    return value


def _read_file(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _fail(code: str, message: str, status: int = 2) -> None:
    click.echo(f"{code}: {message}", err=True)
    sys.exit(status)


# --- evaluate ------------------------------------------------------------------------------


def evaluate_line(obj: Mapping[str, Any], explain: bool = False) -> dict[str, Any]:
    """One JSON-lines request → one result line (see ``hatchway policy evaluate --help``)."""
    return Evaluator(cache=False).evaluate(obj, explain)


@policy.command("evaluate")
@click.option("--explain", is_flag=True, help="Add every statement considered, and why.")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Parse and compile every line's policies again (compiled sets are otherwise reused "
    "across lines with the same policy text).",
)
@click.argument("files", nargs=-1, type=click.File("r"))
def evaluate_cmd(explain: bool, no_cache: bool, files: tuple[IO[str], ...]) -> None:
    """Decide JSON-lines requests from FILES (default: standard input).

    Each input line: {"id"?, "policies": [docs], "action", "resource", "principal",
    "context": {key: value or list}, "resourcePolicy"?, "permissionBoundaries"?: [docs],
    "sessionPolicy"?, "scps"?: [[docs per level, root first]], "resourceAccount"?}.
    Without "resourceAccount" the resource's account is the account field of the "resource"
    ARN (when it has one); a request across accounts needs both the identity policies and the
    resource policy to allow, as on AWS.
    Each output line: {"id", "decision", "matchedStatements", "message"}, or {"id", "error"}.
    Reading standard input, each result is flushed as soon as it is decided.
    """
    if files:
        evaluate_stream(files, sys.stdout, explain, cache=not no_cache)
        sys.stdout.flush()
        return
    _evaluate_interactive(sys.stdin, sys.stdout, explain, cache=not no_cache)


def _evaluate_interactive(stream: IO[str], out: IO[str], explain: bool, cache: bool) -> None:
    """Standard input may be a co-process waiting for each answer: flush every line."""
    ev = Evaluator(cache)
    for raw in stream:
        line = raw.strip()
        if line:
            out.write(ev.line_text(line, explain) + "\n")
            out.flush()


# --- simulate ------------------------------------------------------------------------------


def _context_entries(values: tuple[str, ...]) -> list[ContextEntry]:
    entries: list[ContextEntry] = []
    for v in values:
        text = _policy_arg(v).strip()
        if text.startswith(("[", "{")):
            data = json.loads(text)
            for d in data if isinstance(data, list) else [data]:
                entries.append(ContextEntry.from_dict(d))
            continue
        # AWS CLI shorthand: ContextKeyName=k,ContextKeyValues=v1,v2,ContextKeyType=t
        fields: dict[str, Any] = {}
        current = ""
        for piece in text.split(","):
            name, eq, rest = piece.partition("=")
            if eq and name in ("ContextKeyName", "ContextKeyValues", "ContextKeyType"):
                current = name
                fields[name] = [rest] if name == "ContextKeyValues" else rest
            elif current == "ContextKeyValues":
                fields[current].append(piece)
            else:
                raise click.BadParameter(f"cannot parse context entry: {v}")
        entries.append(ContextEntry.from_dict(fields))
    return entries


class _AwsListOptions(click.Command):
    """AWS CLI list options take several values after one flag (``--action-names a b``)."""

    list_options = (
        "--policy-input-list",
        "--permissions-boundary-policy-input-list",
        "--action-names",
        "--resource-arns",
        "--context-entries",
    )

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        current: str | None = None
        for arg in args:
            if arg.startswith("--"):
                current = arg if arg in self.list_options else None
                out.append(arg)
            elif current is not None and out[-1] != current:
                out += [current, arg]
            else:
                out.append(arg)
        return super().parse_args(ctx, out)


@policy.command("simulate", cls=_AwsListOptions)
@click.option(
    "--policy-input-list",
    multiple=True,
    required=True,
    help="Identity policy JSON (or file://PATH); repeat for several.",
)
@click.option(
    "--permissions-boundary-policy-input-list",
    multiple=True,
    help="Permissions boundary JSON (or file://PATH); repeat for several.",
)
@click.option(
    "--action-names",
    multiple=True,
    required=True,
    help="Actions to simulate, e.g. ssm:StartSession.",
)
@click.option("--resource-arns", multiple=True, help="Resource ARNs to simulate (default: *).")
@click.option("--resource-policy", help="Resource-based policy JSON (or file://PATH).")
@click.option("--resource-owner", help="Account ARN that owns the resources.")
@click.option("--caller-arn", help="ARN of the simulated caller (the principal).")
@click.option(
    "--context-entries",
    multiple=True,
    help="JSON list of ContextEntry, or ContextKeyName=…,ContextKeyValues=…,ContextKeyType=…",
)
def simulate_cmd(
    policy_input_list: tuple[str, ...],
    permissions_boundary_policy_input_list: tuple[str, ...],
    action_names: tuple[str, ...],
    resource_arns: tuple[str, ...],
    resource_policy: str | None,
    resource_owner: str | None,
    caller_arn: str | None,
    context_entries: tuple[str, ...],
) -> None:
    """Offline `aws iam simulate-custom-policy`: same options, same JSON output."""

    def spread(values: tuple[str, ...]) -> list[str]:
        return [part for v in values for part in v.split()]

    inp = SimulationInput(
        policy_input_list=[_policy_arg(p) for p in policy_input_list],
        action_names=spread(action_names),
        resource_arns=spread(resource_arns) or ["*"],
        permissions_boundary_policy_input_list=[
            _policy_arg(p) for p in permissions_boundary_policy_input_list
        ],
        resource_policy=_policy_arg(resource_policy) if resource_policy else None,
        resource_owner=resource_owner,
        caller_arn=caller_arn,
        context_entries=_context_entries(context_entries),
        resource_specific=bool(spread(resource_arns)),
    )
    try:
        result = simulate_custom_policy(inp)
    except PolicyError as exc:
        click.echo(
            f"An error occurred ({exc.code}) when calling the SimulateCustomPolicy "
            f"operation: {exc.message}",
            err=True,
        )
        sys.exit(254)
    click.echo(json.dumps(result, indent=4))


# --- start-session -------------------------------------------------------------------------


def _tags(value: str | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        k, eq, v = item.partition("=")
        if not eq:
            raise click.BadParameter(f"tag must be key=value: {item}")
        tags[k.strip()] = v.strip()
    return tags


@policy.command("start-session")
@click.option(
    "--policy",
    "policy_files",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Identity policy file of the caller; repeat for several.",
)
@click.option("--target", required=True, help="i-…, mi-… or ecs:CLUSTER_TASK_RUNTIME")
@click.option("--document-name", help="As `aws ssm start-session --document-name`.")
@click.option(
    "--region", default=DEFAULT_REGION, show_default=True, help="Region of the target and request."
)
@click.option(
    "--account-id",
    default=DEFAULT_ACCOUNT,
    show_default=True,
    help="Account of the caller and target.",
)
@click.option("--caller-arn", help="Default: arn:aws:iam::ACCOUNT:user/alice")
@click.option("--target-tags", help="k=v,k2=v2: the target's tags")
@click.option("--document-tags", help="k=v,k2=v2: the document's tags")
@click.option("--context", "context_json", help="Extra request context as a JSON object")
@click.option(
    "--permissions-boundary",
    "boundary_files",
    multiple=True,
    metavar="FILE",
    help="Permissions boundary policy file of the caller; repeat for several.",
)
@click.option(
    "--scp",
    "scp_files",
    multiple=True,
    metavar="FILE",
    help="SCP file; each one is its own level, root first.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="2025 AWS docs: an omitted document also needs the default document allowed.",
)
@click.option("--explain", is_flag=True, help="Show every statement considered, and why.")
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Text for people or JSON for programs.",
)
def start_session_cmd(
    policy_files: tuple[str, ...],
    target: str,
    document_name: str | None,
    region: str,
    account_id: str,
    caller_arn: str | None,
    target_tags: str | None,
    document_tags: str | None,
    context_json: str | None,
    boundary_files: tuple[str, ...],
    scp_files: tuple[str, ...],
    strict: bool,
    explain: bool,
    output: str,
) -> None:
    """Would `aws ssm start-session` be allowed? The seed document's question, answered.

    Exit status: 0 allowed, 1 denied, 2 bad input.
    """
    try:
        identity = [parse_policy(_read_file(f), PolicyKind.IDENTITY, name=f) for f in policy_files]
        boundary = [
            parse_policy(_read_file(f), PolicyKind.BOUNDARY, name=f) for f in boundary_files
        ]
        scps = [[parse_policy(_read_file(f), PolicyKind.SCP, name=f)] for f in scp_files]
    except MalformedPolicyDocument as exc:
        _fail(exc.code, exc.message)
        return
    except PolicyError as exc:
        _fail(exc.code, exc.message)
        return
    except OSError as exc:
        _fail("FileError", str(exc))
        return
    try:
        arn = target_arn(target, region, account_id)
    except InvalidTarget:
        _fail("InvalidTarget", f"{target} is not a valid target (i-…, mi-… or ecs:…)")
        return
    principal = Principal.from_arn(caller_arn or f"arn:aws:iam::{account_id}:user/alice")
    ctx = make_context(json.loads(context_json)) if context_json else {}
    ctx.setdefault("aws:requestedregion", region)
    ps = PolicySet(identity, boundary=boundary or None, scps=scps)
    result = authorize_start_session(
        ps,
        principal,
        target_arn=arn,
        region=region,
        account=account_id,
        document_name=document_name,
        target_tags=_tags(target_tags),
        document_tags=_tags(document_tags),
        context=ctx,
        mode=StartSessionMode.STRICT if strict else StartSessionMode.LEGACY,
        explain=explain,
    )
    if output == "json":
        click.echo(json.dumps(result.to_dict(explain), indent=2))
    else:
        _print_start_session(result.to_dict(explain), target)
    sys.exit(0 if result.allowed else 1)


def _print_start_session(d: Mapping[str, Any], target: str) -> None:
    head = "ALLOWED" if d["decision"] == "allowed" else f"DENIED ({d['decision']})"
    click.echo(f"StartSession --target {target}: {head}")
    click.echo(
        f"  session document: {d['documentName']}"
        + ("" if d["reason"]["documentNamed"] else " (default; no --document-name)")
    )
    for e in d["evaluations"]:
        check = e["context"]["ssm:SessionDocumentAccessCheck"]
        shown = "absent" if check is None else f'"{check}"'
        click.echo(f"  {e['role']:8} {e['resource']}")
        click.echo(f"           ssm:SessionDocumentAccessCheck = {shown}")
        click.echo(
            f"           {e['decision']}"
            + "".join(
                f" by {s['policyId']} statement {s['statementIndex']}"
                + (f" ({s['sid']})" if s.get("sid") else "")
                for s in e["matchedStatements"][:1]
            )
        )
        for step in e.get("explanation") or []:
            for s in step["statements"]:
                why = "applies" if s["applies"] else s["reason"]
                click.echo(
                    f"             {s['policyId']} #{s['statementIndex']} {s['effect']}: {why}"
                )
    if d["message"]:
        click.echo(f"  {d['message']}")
    click.echo(f"  why: {d['reason']['text']}")


# --- demo ----------------------------------------------------------------------------------

_DEMO_INSTANCE = "arn:aws:ec2:us-west-2:123456789012:instance/i-02573cafcfEXAMPLE"
_DEMO_RUN_SHELL = "arn:aws:ssm:us-west-2:123456789012:document/SSM-SessionManagerRunShell"
_DEMO_POLICIES: dict[str, dict[str, Any]] = {
    "no condition": {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ssm:StartSession",
                "Resource": [_DEMO_INSTANCE, _DEMO_RUN_SHELL],
            }
        ],
    },
    "seed (BoolIfExists true)": {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ssm:StartSession",
                "Resource": [_DEMO_INSTANCE, _DEMO_RUN_SHELL],
                "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
            }
        ],
    },
}


@policy.command("demo")
def demo_cmd() -> None:
    """The seed document's scenarios, decided by the engine."""
    click.echo("Hatchway policy engine: `aws ssm start-session --target i-02573cafcfEXAMPLE`")
    click.echo("under the seed document's policies (region us-west-2, account 123456789012)\n")
    principal = Principal.from_arn("arn:aws:iam::123456789012:user/alice")
    for title, doc in _DEMO_POLICIES.items():
        ps = PolicySet([parse_policy(json.dumps(doc), name=title)])
        click.echo(f"policy: {title}")
        for name in (None, "SSM-SessionManagerRunShell", "AWS-StartSSHSession"):
            r = authorize_start_session(
                ps,
                principal,
                target_arn=_DEMO_INSTANCE,
                region="us-west-2",
                account="123456789012",
                document_name=name,
            )
            shown = f"--document-name {name}" if name else "(no --document-name)"
            click.echo(f"  {shown:42} {r.decision:13} {r.reason}")
        click.echo("")
    click.echo("Try it yourself:")
    click.echo(
        "  hatchway policy start-session --policy POLICY.json --target i-02573cafcfEXAMPLE "
        "[--document-name NAME] --explain"
    )
    click.echo("  hatchway policy lint POLICY.json")
    click.echo(
        '  echo \'{"policies": [...], "action": "ssm:StartSession", ...}\' | '
        "hatchway policy evaluate --explain"
    )


# --- lint ----------------------------------------------------------------------------------


@policy.command("lint")
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Text for people or JSON for programs.",
)
def lint_cmd(files: tuple[str, ...], output: str) -> None:
    """Session Manager pitfalls in identity policies that apply together.

    Exit status: 0 nothing found, 1 findings, 2 bad input.
    """
    docs: list[tuple[str, Mapping[str, Any]]] = []
    for f in files:
        try:
            docs.append((f, parse_policy(_read_file(f), PolicyKind.IDENTITY, name=f).document))
        except PolicyError as exc:
            _fail(exc.code, f"{f}: {exc.message}")
        except OSError as exc:
            _fail("FileError", str(exc))
    findings = lint_policies(docs)
    if output == "json":
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        for finding in findings:
            where = f"statement {finding.statement_index}" + (
                f" ({finding.sid})" if finding.sid else ""
            )
            click.echo(f"{finding.policy}: {where}: {finding.code}: {finding.message}")
        if not findings:
            click.echo("no findings")
    sys.exit(1 if findings else 0)
