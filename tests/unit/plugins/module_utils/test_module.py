"""The modules' shared plumbing: one argument spec per module (_argspec), and every exception turned into
fail_json in one place (_module)."""

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils import _module
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
ANSIBLE_DOC = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
# The directory holding the ansible_collections/ this process imports the collection from (pytest-ansible's
# collections/ tree, or ansible-test's copy): the child processes below are pointed at the same one.
COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(argspec.__file__), *[os.pardir] * 5))
SPECS = {"criu_checkpoint": argspec.CHECKPOINT, "criu_restore": argspec.RESTORE, "criu_verify": argspec.VERIFY,
         "criu_info": argspec.INFO, "criu_migrate": argspec.MIGRATE, "criu_checkpoint_info": argspec.CHECKPOINT_INFO,
         "criu_drain_facts": argspec.DRAIN_FACTS}


class FakeModule:
    def __init__(self, diff=False):
        self.calls = []
        self._diff = diff

    def exit_json(self, **kwargs):
        self.calls.append(("exit", kwargs))
        raise SystemExit(0)

    def fail_json(self, **kwargs):
        self.calls.append(("fail", kwargs))
        raise SystemExit(1)


def test_success_exits_with_result():
    module = FakeModule()
    with pytest.raises(SystemExit):
        _module.run_module(module, lambda: {"changed": True, "pid": 7})
    assert module.calls == [("exit", {"changed": True, "pid": 7})]


@pytest.mark.parametrize("diff", [False, True])
def test_diff_is_returned_only_under_diff_mode(diff):
    module = FakeModule(diff=diff)
    shown = {"before": {}, "after": {"pid": 7}}
    with pytest.raises(SystemExit):
        _module.run_module(module, lambda: {"changed": True, "diff": shown})
    assert module.calls == [("exit", dict({"changed": True}, **({"diff": shown} if diff else {})))]


def test_criu_error_becomes_fail_json_with_details():
    module = FakeModule()

    def action():
        raise CriuError("criu dump failed", log="/x/dump.log", errors=["Error (x)"])

    with pytest.raises(SystemExit):
        _module.run_module(module, action)
    assert module.calls == [("fail", {"msg": "criu dump failed", "log": "/x/dump.log", "errors": ["Error (x)"]})]


def test_criu_error_shows_its_updated_msg():
    module = FakeModule()

    def action():
        exc = CriuError("criu failed. Log: /tmp/private/restore.log")
        exc.msg = "criu failed. Log: /var/lib/criu/c/restore.log"
        raise exc

    with pytest.raises(SystemExit):
        _module.run_module(module, action)
    assert module.calls[0][1]["msg"] == "criu failed. Log: /var/lib/criu/c/restore.log"


@pytest.mark.parametrize("exc, message", [
    (FileNotFoundError(2, "No such file or directory", "/var/lib/criu/x"),
     "Unexpected FileNotFoundError (/var/lib/criu/x): [Errno 2] No such file or directory: '/var/lib/criu/x'."),
    (ValueError("bad value"), "Unexpected ValueError: bad value."),
    (OSError(5, "Input/output error"), "Unexpected OSError: [Errno 5] Input/output error."),
])
def test_unexpected_exception_becomes_fail_json_with_traceback(exc, message):
    module = FakeModule()

    def action():
        raise exc

    with pytest.raises(SystemExit):
        _module.run_module(module, action)
    [(kind, result)] = module.calls
    assert kind == "fail" and result["msg"].startswith(message) and "please report it to nucleus.criu" in result["msg"]
    assert "Traceback (most recent call last)" in result["exception"] and "in action" in result["exception"]


def test_keyboard_interrupt_is_not_swallowed():
    module = FakeModule()

    def action():
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        _module.run_module(module, action)
    assert module.calls == []


def test_create_module_passes_the_whole_spec(monkeypatch):
    made = {}
    monkeypatch.setattr(_module, "AnsibleModule", lambda **kwargs: made.update(kwargs) or "module")
    assert _module.create_module(argspec.CHECKPOINT) == "module"
    assert made == {"argument_spec": argspec.CHECKPOINT.argument_spec, "mutually_exclusive": argspec.CHECKPOINT.mutually_exclusive,
                    "required_one_of": argspec.CHECKPOINT.required_one_of, "required_if": argspec.CHECKPOINT.required_if,
                    "supports_check_mode": True}


# --- _argspec ------------------------------------------------------------------------------------


def test_hmac_key_is_no_log_and_exclusive():
    assert argspec.COMMON["hmac_key"]["no_log"] is True
    assert argspec.COMMON["hmac_key_file"]["no_log"] is False  # a path, not a secret
    assert ("hmac_key", "hmac_key_file") in argspec.COMMON_EXCLUSIVE


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_module_accepts_the_group_options(name):
    spec = SPECS[name]
    for option, definition in argspec.COMMON.items():
        assert spec.argument_spec[option] == definition
    assert ("hmac_key", "hmac_key_file") in spec.mutually_exclusive
    for group in spec.mutually_exclusive + spec.required_one_of:
        assert set(group) <= set(spec.argument_spec), group


def test_post_copy_options_are_gone():
    assert not {"lazy_pages", "page_server_port"} & set(argspec.CHECKPOINT.argument_spec)
    assert "lazy_pages_port" not in argspec.RESTORE.argument_spec


def test_signature_options_of_the_readers():
    for spec in (argspec.RESTORE, argspec.VERIFY):
        assert spec.argument_spec["require_signature"] == {"type": "bool", "default": False}
        assert spec.argument_spec["skip_signature_check"] == {"type": "bool", "default": False}


def test_defaults_fill_in_every_option():
    params = argspec.CHECKPOINT.defaults(pid=42, dest="/var/lib/criu/x")
    assert set(params) == set(argspec.CHECKPOINT.argument_spec)
    assert params["pid"] == 42 and params["dest"] == "/var/lib/criu/x"
    assert params["timeout"] == argspec.DEFAULT_TIMEOUT and params["network_lock"] == "nftables"
    assert params["pidfile"] is None and params["leave_running"] is False and params["shell_job"] is None
    assert argspec.VERIFY.defaults()["check_host"] is False and argspec.RESTORE.defaults()["verify"] is True


def test_defaults_do_not_share_state():
    first = argspec.RESTORE.defaults(src="/a")
    first["force"] = True
    assert argspec.RESTORE.defaults()["force"] is False and argspec.RESTORE.defaults()["src"] is None


@pytest.mark.parametrize("name", sorted(SPECS))
def test_ansible_module_accepts_the_defaults(name):
    """AnsibleModule, given only the required options, builds exactly what Spec.defaults builds (in a child process:
    AnsibleModule changes process-wide state)."""
    spec = SPECS[name]
    given = {"criu_checkpoint": {"pid": 42, "dest": "/var/lib/criu/x"}, "criu_restore": {"src": "/var/lib/criu/x"},
             "criu_verify": {"path": "/var/lib/criu/x"}, "criu_info": {},
             "criu_migrate": {"name": "job", "pid": 42, "target": "b.example"},
             "criu_checkpoint_info": {"path": "/var/lib/criu"}, "criu_drain_facts": {"role": "target"}}[name]
    code = ("import json, sys; sys.path.insert(0, %r)\n"
            "from ansible.module_utils.testing import patch_module_args\n"
            "from ansible_collections.nucleus.criu.plugins.module_utils import _argspec, _module\n"
            "with patch_module_args(%r):\n"
            "    module = _module.create_module(_argspec.%s)\n"
            "print(json.dumps(module.params))\n" % (COLLECTIONS, given,
                                                    {"criu_checkpoint": "CHECKPOINT", "criu_restore": "RESTORE",
                                                     "criu_verify": "VERIFY", "criu_info": "INFO",
                                                     "criu_migrate": "MIGRATE",
                                                     "criu_checkpoint_info": "CHECKPOINT_INFO",
                                                     "criu_drain_facts": "DRAIN_FACTS"}[name]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = json.loads(proc.stdout.splitlines()[-1])
    if name == "criu_verify":
        params.pop("src", None)  # the alias
    assert params == spec.defaults(**given)


def _checkpoint_module(given):
    """What AnsibleModule makes of criu_checkpoint's ``given`` params: (exit code, its JSON output), in a child process."""
    code = ("import json, sys; sys.path.insert(0, %r)\n"
            "from ansible.module_utils.testing import patch_module_args\n"
            "from ansible_collections.nucleus.criu.plugins.module_utils import _argspec, _module\n"
            "with patch_module_args(%r):\n"
            "    module = _module.create_module(_argspec.CHECKPOINT)\n"
            "print(json.dumps(module.params))\n" % (COLLECTIONS, given))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return proc.returncode, json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("given, message", [
    ({"dest": "/var/lib/criu/x"}, "state is present but any of the following are missing: pid, pidfile"),
    ({"dest": "/var/lib/criu/x", "state": "present"}, "state is present but any of the following are missing: pid, pidfile"),
    ({"dest": "/var/lib/criu/x", "pid": 1, "pidfile": "/run/x.pid"}, "parameters are mutually exclusive: pid|pidfile"),
    ({"dest": "/var/lib/criu/x", "state": "gone"}, "value of state must be one of: present, absent"),
])
def test_checkpoint_spec_refuses(given, message):
    returncode, output = _checkpoint_module(given)
    assert returncode == 1 and message in output["msg"], output


def test_checkpoint_spec_state_absent_needs_no_pid():
    assert argspec.CHECKPOINT.required_if == [("state", "present", ("pid", "pidfile", "container", "unit"), True)]
    returncode, params = _checkpoint_module({"dest": "/var/lib/criu/x", "state": "absent", "keep": 3})
    assert returncode == 0 and params == argspec.CHECKPOINT.defaults(dest="/var/lib/criu/x", state="absent", keep=3)


def _documented_options(name):
    # ansible-test units narrows PYTHONPATH to module code; the ansible-doc command needs all of ansible.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    proc = subprocess.run([ANSIBLE_DOC, "-j", "-t", "module", "nucleus.criu.%s" % name], cwd=REPO, capture_output=True,
                          text=True, check=False, env=dict(env, ANSIBLE_NOCOLOR="1", ANSIBLE_COLLECTIONS_PATH=COLLECTIONS))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["nucleus.criu.%s" % name]["doc"]["options"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_documentation_matches_the_argument_spec(name):
    documented = _documented_options(name)
    spec = SPECS[name].argument_spec
    assert sorted(documented) == sorted(spec)
    for option, definition in spec.items():
        doc = documented[option]
        assert doc.get("type", "str") == definition.get("type", "str"), option
        assert doc.get("default") == definition.get("default"), option
        assert doc.get("choices") == definition.get("choices"), option
        assert bool(doc.get("required")) == bool(definition.get("required")), option
