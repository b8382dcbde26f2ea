# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything that can be known before the freeze, on both hosts: privileges, criu or the engine, the workload's
state, the target over ssh as the migration will reach it, its space, hashes and journal; an image the target
lacks is sent first."""

from __future__ import annotations

import contextlib
import os
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _target as target_
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _wire as wire
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Found, Kind
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings
from ansible_collections.nucleus.criu.plugins.module_utils.migration._worker import SEND_CHUNK


# Dumped images are at least the resident memory; leave room for the rest.
SPACE_MARGIN = 1.1


SPACE_EXTRA = 64 * 1024 * 1024

PREFLIGHT_STOP = "Migration of %s stopped at preflight, before touching the workload: %s"


def preflight(settings_: Settings, code: bytes, kind: Kind, found: Found, journal_id: str, criu_path: t.Optional[str],
              check_mode: bool) -> t.Dict[str, t.Any]:
    """Everything that can be known before the freeze, on both hosts; raises naming what would fail. An image the
    target lacks (a container's) is sent first when ``transfer_image`` asks for it (never in check mode)."""
    try:
        facts = _check_both_hosts(settings_, code, kind, found, journal_id, criu_path)
        image = kind.image_to_send(found, facts["target"])
        if image is not None and not check_mode:
            facts["image_seconds"] = _send_image(settings_, code, journal_id, kind, found, image)
        return facts
    except CriuError as exc:
        if not exc.msg.startswith(PREFLIGHT_STOP % (settings_.name, "")):
            exc.msg = PREFLIGHT_STOP % (settings_.name, exc.msg)
        raise


def _check_both_hosts(settings_: Settings, code: bytes, kind: Kind, found: Found, journal_id: str,
                      criu_path: t.Optional[str]) -> t.Dict[str, t.Any]:
    host.require_privileges()
    problems = kind.source_problems(criu_path, settings_.timeout, host.effective_caps())
    pid = t.cast(int, found.pid)
    st = procfs.require_checkpointable(pid)
    if st.state == "T":
        raise CriuError(_stopped_source(settings_, code, pid, journal_id), pid=pid)
    if settings_.mode == "postcopy":
        host.require_page_server()
    tree = procfs.tree_identity(pid)
    expected = int(procfs.resident_bytes(member[0] for member in tree) * SPACE_MARGIN) + SPACE_EXTRA
    try:
        facts = remote.ask(settings_.target, code, settings_.link_timeout, cmd="preflight", id=journal_id, name=settings_.name,
                           migrate_dir=settings_.directory, timeout=settings_.timeout, transfer_image=settings_.transfer_image,
                           **kind.journal_identity(found))
    except CriuError as exc:
        raise CriuError("the source cannot run nucleus.criu on the target over ssh as the migration would (check ssh_user, "
                        "ssh_port, ssh_key_file, ssh_extra_args and target_python): %s" % exc.msg, target=settings_.target.label) from exc
    problems += list(facts["criu"]["problems"]) + ([facts["privilege_problem"]] if not facts["can_restore"] else [])
    problems += kind.target_problems(facts)
    if facts["arch"] != os.uname().machine:
        problems.append("the target is %s, the source %s: migrate only between hosts of one architecture" % (facts["arch"], os.uname().machine))
    if facts["free_bytes"] < expected:
        problems.append("%s has %d MiB free, the checkpoint needs about %d MiB: free space there or choose another migrate_dir"
                        % (settings_.directory, facts["free_bytes"] >> 20, expected >> 20))
    if settings_.algorithm == "auto":
        both = [name for name in integrity.available_algorithms() if name in facts["hash_algorithms"]]
        settings_ = settings_._replace(algorithm="blake3" if "blake3" in both else integrity.DEFAULT_ALGORITHM)
    elif settings_.algorithm not in integrity.available_algorithms():
        integrity.choose_algorithm(settings_.algorithm)  # raises, naming what this host lacks
    if settings_.algorithm not in facts["hash_algorithms"]:
        problems.append("the target's Python lacks %s (it has %s): %s"
                        % (settings_.algorithm, ", ".join(facts["hash_algorithms"]), integrity.BLAKE3_HINT))
    if settings_.mode == "postcopy" and not facts["criu"].get("lazy_pages"):
        problems.append("the target's kernel cannot restore lazily (criu check --feature uffd-noncoop fails): use mode=copy")
    other = facts.get("journal")
    if other and other.get("outcome") in (None, "in_doubt"):
        problems.append("the target holds an unfinished migration of %s (id %s, phase %s): resolve it first by rerunning the "
                        "migration that started it" % (settings_.name, other.get("id"), other.get("phase")))
    if problems:
        raise CriuError("%s." % listed(problems), problems=problems)
    return {"tree": tree, "expected_bytes": expected, "target": facts, "algorithm": settings_.algorithm}


def _stopped_source(settings_: Settings, code: bytes, pid: int, journal_id: str) -> str:
    """Why a stopped process with no journal here is not migrated, and what to do: asked of the target first. A lost
    (or damaged and moved aside) journal may have frozen it, and the target may run its copy: "resume it" would then
    run the workload twice."""
    try:
        facts = remote.ask(settings_.target, code, settings_.link_timeout, cmd="preflight", id=journal_id, name=settings_.name,
                           migrate_dir=settings_.directory, timeout=settings_.timeout, transfer_image=False, container=None)
        other = facts.get("journal")
    except CriuError as exc:
        return ("pid %d is stopped (state T), this host has no journal of migration %s, and the target could not be asked whether "
                "it holds one (%s). Do not resume it before you know: if a migration froze it, the target may run its copy. "
                "Rerun once the target is reachable." % (pid, settings_.name, exc.msg))
    if other is None:
        return ("pid %d is stopped (state T) and no migration of %s explains it, on this host or on the target: a checkpoint of "
                "a stopped process restores stopped. Resume it (kill -CONT %d) if it should run, then migrate it."
                % (pid, settings_.name, pid))
    if other.get("outcome") == "completed":
        return ("pid %d is stopped (state T) and this host has no journal of migration %s, but the target's journal says that "
                "migration (id %s) completed: its copy runs there, and pid %d is most likely its frozen source, whose journal "
                "was lost here. Do not resume it (the workload would run twice): end it (kill -KILL %d) once you have checked "
                "the copy on the target." % (pid, settings_.name, other.get("id"), pid, pid))
    return ("pid %d is stopped (state T) and this host has no journal of migration %s, but the target holds that migration "
            "(id %s, phase %s, outcome %s): pid %d is most likely its frozen source, whose journal was lost here, with the "
            "decision it held. Do not resume it while the target holds the migration; see the target's journal in %s."
            % (pid, settings_.name, other.get("id"), other.get("phase"), other.get("outcome") or "none yet", pid, settings_.directory))


def _send_image(settings_: Settings, code: bytes, journal_id: str, kind: Kind, found: Found,
                image: t.Mapping[str, t.Any]) -> float:
    """The workload's image to the target (a container's: podman save here, podman load there), before anything is
    frozen: a checkpoint holds the container's changes, never its image. Its seconds."""
    started = time.monotonic()
    dir_fd, _path = store.open_or_create_dir(settings_.directory, "Migration directory")
    name = target_.image_archive_name(settings_.name)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, store.FILE_MODE, dir_fd=dir_fd)
        try:
            kind.save_image(image, fd, settings_.timeout)
            agent = remote.Agent(settings_.target, code, {"cmd": "load_image", "id": journal_id, "name": settings_.name,
                                                          "migrate_dir": settings_.directory, "timeout": settings_.timeout,
                                                          "link_timeout": settings_.link_timeout, "image_id": image["image_id"],
                                                          "image_name": image["image_name"], **kind.journal_identity(found)})
            try:
                agent.answer(settings_.link_timeout)
                offset = 0
                while True:
                    data = os.pread(fd, SEND_CHUNK, offset)
                    if not data:
                        break
                    agent.channel.send_chunk("image.tar", offset, data)
                    offset += len(data)
                agent.channel.send(sealed=True, size=offset)
                agent.answer(settings_.link_timeout + settings_.timeout)
            finally:
                agent.close(kill=True)
        finally:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
    except (CriuError, wire.LinkError) as exc:
        raise CriuError("the container's image %s could not be sent to the target: %s"
                        % (image["image_name"], getattr(exc, "msg", exc))) from exc
    finally:
        os.close(dir_fd)
    return round(time.monotonic() - started, 3)
