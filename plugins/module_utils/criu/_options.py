# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The criu options the modules accept, declared once: module name, criu flag, type, and when each applies.

Every option reaches criu as argv built here from a typed, validated value; nothing free-form ever does.
Options a restore needs again are recorded in metadata.json at dump and replayed by criu_restore, so a
checkpoint carries what it takes to bring it back.
"""

from __future__ import annotations

import re
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)
_CGROUP_ROOT_RE = re.compile(r"^([A-Za-z0-9_,]+:)?/[^\x00-\x1f]*$")
MAX_GHOST_LIMIT = 1 << 40


def parse_size(value: t.Any, name: str) -> int:
    """Bytes from an int or a size such as ``8M``, ``512K``, ``1G`` (powers of 1024, as criu reads them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise CriuError("%s=%r is not a size: give bytes, or a number with K, M or G (e.g. 8M)." % (name, value))
        size = int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]
    if not 0 < size <= MAX_GHOST_LIMIT:
        raise CriuError("%s=%r must be between 1 byte and 1T." % (name, value))
    return size


def parse_cgroup_roots(items: t.Sequence[str], name: str) -> t.List[str]:
    """``[CONTROLLER[,CONTROLLER]:]/PATH`` items, as criu's --cgroup-root reads them."""
    for item in items:
        if not _CGROUP_ROOT_RE.match(item):
            raise CriuError("%s item %r is not of the form criu expects (e.g. /machine/job or cpu,cpuacct:/machine/job)."
                            % (name, item))
    return list(items)


class Option(t.NamedTuple):
    """One criu option as the modules expose it: every fact about it, so that argument specs, argv, the replay at
    restore and what Podman passes all derive from this table."""

    name: str
    flag: str
    kind: str  # "bool": the flag alone; "value": --flag=VALUE; "list": --flag VALUE for each item
    at_dump: bool  # criu_checkpoint takes it
    at_restore: bool  # criu_restore takes it
    replay: bool  # a restore repeats what the dump used (criu needs it again)
    choices: t.Optional[t.Tuple[str, ...]] = None
    default: t.Any = None  # at dump (and migration); at restore an option left out replays, or leaves criu's default
    parse: t.Optional[t.Callable[[t.Any, str], t.Any]] = None  # validates and types a given value
    podman: bool = False  # Podman passes it to criu for a container (the same flag), at its checkpoint and restore

    def applies(self, at: str) -> bool:
        """Whether ``at`` ("dump", "restore" or "migrate": a dump, then a restore on the target) takes this option."""
        return {"dump": self.at_dump, "restore": self.at_restore, "migrate": True}[at]

    @property
    def restore_choice(self) -> bool:
        """A choice made at restore, not a replay of the dump's: a migration passes it to the target's restore."""
        return self.at_restore and not self.replay

    def spec(self, at: str) -> t.Dict[str, t.Any]:
        """This option's AnsibleModule argument spec for ``at``."""
        spec: t.Dict[str, t.Any] = {"type": {"bool": "bool", "value": "str", "list": "list"}[self.kind]}
        if self.kind == "list":
            spec.update(elements="str", default=[])
        elif at != "restore" and self.default is not None:
            spec["default"] = self.default
        if self.choices:
            spec["choices"] = list(self.choices)
        return spec


OPTIONS: t.Tuple[Option, ...] = (
    Option("tcp_established", "--tcp-established", "bool", True, True, True, default=False, podman=True),
    Option("tcp_close", "--tcp-close", "bool", True, True, True, default=False),
    Option("skip_in_flight", "--skip-in-flight", "bool", True, False, False, default=False),
    Option("ext_unix_sk", "--ext-unix-sk", "bool", True, False, True, default=False),
    Option("file_locks", "--file-locks", "bool", True, False, True, default=False, podman=True),
    Option("shell_job", "--shell-job", "bool", True, False, True),  # left out: detected from the process
    Option("link_remap", "--link-remap", "bool", True, False, False, default=False),
    Option("ghost_limit", "--ghost-limit", "value", True, False, False, parse=parse_size),
    Option("network_lock", "--network-lock", "value", True, False, False, ("nftables", "iptables", "skip"), default="nftables"),
    Option("manage_cgroups", "--manage-cgroups", "value", True, True, False, ("none", "props", "soft", "full", "strict", "ignore")),
    Option("cgroup_root", "--cgroup-root", "list", False, True, False, parse=parse_cgroup_roots),
)
BY_NAME = {option.name: option for option in OPTIONS}
PODMAN_PASSES = tuple(option.name for option in OPTIONS if option.podman)


def podman_flags(options: t.Mapping[str, t.Any]) -> t.List[str]:
    """The flags Podman is given for the criu options it passes that are set in ``options``."""
    return [option.flag for option in OPTIONS if option.podman and options.get(option.name)]


def normalise(given: t.Mapping[str, t.Any], at: str) -> t.Dict[str, t.Any]:
    """The options ``given`` (by name) for ``at`` ("dump", "restore", "migrate"), validated and typed; None for those
    not given."""
    chosen: t.Dict[str, t.Any] = {}
    for option in OPTIONS:
        if not option.applies(at):
            continue
        value = given.get(option.name)
        if value is None or value == []:
            chosen[option.name] = None
        else:
            chosen[option.name] = option.parse(value, option.name) if option.parse else value
    if chosen.get("tcp_established") and chosen.get("tcp_close"):
        raise CriuError("tcp_established and tcp_close contradict each other: the first keeps established TCP connections, "
                        "the second closes them. Set only one.")
    return chosen


def argv(options: t.Mapping[str, t.Any], at: str) -> t.List[str]:
    """criu flags for the options that are set."""
    flags: t.List[str] = []
    for option in OPTIONS:
        if not (option.at_dump if at == "dump" else option.at_restore or option.replay):
            continue
        value = options.get(option.name)
        if value is None or value is False or value == []:
            continue
        if option.kind == "bool":
            flags.append(option.flag)
        elif option.kind == "value":
            flags.append("%s=%s" % (option.flag, value))
        else:
            for item in value:
                flags += [option.flag, item]
    return flags


def for_restore(metadata: t.Mapping[str, t.Any], given: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The options a restore of this checkpoint runs with: what the dump used and criu needs again, what the dump's
    own check found the images need, then what the caller chose at restore (``given``, by name). A choice criu would refuse is refused
    here, naming it."""
    recorded = metadata["options"]
    required = metadata.get("restore_needs") or {}
    chosen = normalise(given, "restore")
    effective: t.Dict[str, t.Any] = {}
    for option in OPTIONS:
        if option.replay:
            effective[option.name] = recorded.get(option.name) or required.get(option.name) or False
        if option.at_restore and chosen.get(option.name) is not None:
            effective[option.name] = chosen[option.name]
    if recorded.get("tcp_close") and chosen.get("tcp_close") is False:
        raise CriuError("This checkpoint was made with tcp_close=true: criu can restore its TCP connections only closed. "
                        "Leave tcp_close unset (or true).")
    if effective.get("tcp_established") and effective.get("tcp_close"):
        if chosen.get("tcp_close"):
            effective["tcp_established"] = False  # closing the connections at restore is a choice the caller may make
        else:
            raise CriuError("tcp_established=true cannot restore a checkpoint made with tcp_close=true: its connections "
                            "were not saved. Leave tcp_established unset.")
    return effective


def images_need(image_names: t.Iterable[str], options: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """Restore options that the images themselves call for, beyond the dump's: a connected TCP socket in a state
    criu dumps without tcp_established (e.g. closed on both sides) still leaves a tcp-stream image, and criu then
    refuses to restore it without tcp_established."""
    needs: t.Dict[str, t.Any] = {}
    if not (options.get("tcp_established") or options.get("tcp_close")) and any(
            name.startswith("tcp-stream-") for name in image_names):
        needs["tcp_established"] = True
    return needs
