"""The migration's sender (_migrate.send_rest): what reaches the target after the dump."""

from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils import _migrate as migrate
from .mu_helpers import dir_fd


def test_every_image_reaches_the_target_even_an_empty_one(tmp_path):
    """criu writes empty images (a network namespace's iptables-N.img without rules): the target must create them
    too, or it finds them listed in the manifest but missing and aborts the migration."""
    (tmp_path / "core-1.img").write_bytes(b"core")
    (tmp_path / "iptables-10.img").write_bytes(b"")
    (tmp_path / "pages-1.img").write_bytes(b"")  # followed while criu wrote it, and empty
    followed = {"pages-1.img": integrity.Digester("sha256").result()}
    sent = []
    with dir_fd(tmp_path) as fd:
        hashed = migrate.send_rest(fd, dict(followed), "sha256", lambda name, offset, data: sent.append((name, offset, bytes(data))))
    assert sorted(sent) == [("core-1.img", 0, b"core"), ("iptables-10.img", 0, b""), ("pages-1.img", 0, b"")]
    assert set(hashed) == {"core-1.img", "iptables-10.img", "pages-1.img"}
    assert hashed["iptables-10.img"] == integrity.Digester("sha256").result()
