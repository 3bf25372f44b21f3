"""cloudctl image / profile verbs against a real cloudctld."""

from __future__ import annotations

import hashlib


def test_import_set_show_rollback(daemon, tmp_path):
    kernel, initrd, xen = tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path / "xen.gz"
    kernel.write_bytes(b"kernel" * 1000)
    initrd.write_bytes(b"initrd" * 2000)
    xen.write_bytes(b"xen" * 500)
    first = daemon.cli_json(
        "image", "import", "deb12", "--kernel", str(kernel), "--initrd", str(initrd)
    )
    assert first["kernel_sha256"] == hashlib.sha256(kernel.read_bytes()).hexdigest()
    assert first["multiboot"] is False
    stored = daemon.directory / "images" / "deb12"
    assert (stored / "kernel").read_bytes() == kernel.read_bytes()
    daemon.cli(
        "image",
        "import",
        "xen417",
        "--kernel",
        str(kernel),
        "--initrd",
        str(initrd),
        "--hypervisor",
        str(xen),
    )
    assert [i["name"] for i in daemon.cli_json("image", "list")] == ["deb12", "xen417"]

    v1 = daemon.cli_json(
        "profile", "set", "hnode", "--image", "deb12", "--cmdline", "console=ttyS0 {name}"
    )
    assert (v1["version"], v1["image"], v1["bios_program"]) == (1, "deb12", "undionly.kpxe")
    v2 = daemon.cli_json(
        "profile",
        "set",
        "hnode",
        "--image",
        "xen417",
        "--hypervisor-args",
        "dom0_mem=768M",
        "--bios-program",
        "pxelinux.0",
        "--reason",
        "xen rollout",
    )
    assert (v2["version"], v2["image"], v2["cmdline"]) == (2, "xen417", "console=ttyS0 {name}")
    in_use = daemon.cli("image", "remove", "deb12", check=False)
    assert in_use.stderr == (
        "cloudctl: error: image deb12 is used by the hnode profile (current or rollback)\n"
    )
    back = daemon.cli_json("profile", "rollback", "hnode", "--reason", "dom0 panics")
    assert (back["version"], back["image"]) == (1, "deb12")
    shown = daemon.cli_json("profile", "show", "hnode")
    assert [(h["version"], h["active"]) for h in shown["history"]] == [(1, True), (2, False)]
    all_roles = daemon.cli_json("profile", "show")
    assert [p["role"] for p in all_roles] == ["hnode", "snode", "instance", "discovery"]
    actions = [e["action"] for e in daemon.cli_json("audit", "list")]
    assert actions[:3] == ["profile.rollback", "profile.set", "profile.set"]


def test_bad_boot_input_is_one_line(daemon, tmp_path):
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    cases = [
        (
            ["image", "import", "Bad Name", "--kernel", str(kernel), "--initrd", str(kernel)],
            "invalid image name 'Bad Name': use 1-63 lower-case letters, digits, '.', '_' and '-'",
        ),
        (
            [
                "image",
                "import",
                "x",
                "--kernel",
                str(kernel),
                "--initrd",
                str(tmp_path / "missing"),
            ],
            f"initrd {tmp_path / 'missing'} is not a readable file",
        ),
        (
            ["profile", "set", "hnode", "--image", "nope"],
            "no image named 'nope': import it with `cloudctl image import`",
        ),
        (
            ["profile", "set", "hnode", "--cmdline", "root={rootdev}"],
            "cmdline: unknown placeholder {rootdev}; known: {name}, {mac}, {ip}, {server}, "
            "{domain}, {gateway}, {netmask}, {role}, {storage}",
        ),
        (["profile", "rollback", "snode"], "the snode profile has never been set"),
    ]
    for args, message in cases:
        result = daemon.cli(*args, check=False)
        assert result.returncode == 1, args
        assert result.stderr == f"cloudctl: error: {message}\n"
    assert daemon.cli_json("image", "list") == []


def test_xen_profile_too_long_for_ipxe_is_refused(daemon, tmp_path):
    files = {}
    for part in ("k", "i", "x"):
        files[part] = tmp_path / part
        files[part].write_bytes(part.encode() * 100)
    daemon.cli(
        "image",
        "import",
        "xen",
        "--kernel",
        str(files["k"]),
        "--initrd",
        str(files["i"]),
        "--hypervisor",
        str(files["x"]),
    )
    long = "console=hvc0 " + "x" * 400
    refused = daemon.cli(
        "profile", "set", "hnode", "--image", "xen", "--cmdline", long, check=False
    )
    assert refused.returncode == 1
    assert "but iPXE passes at most 512 to a multiboot kernel" in refused.stderr
    accepted = daemon.cli_json(
        "profile",
        "set",
        "hnode",
        "--image",
        "xen",
        "--cmdline",
        long,
        "--bios-program",
        "pxelinux.0",
    )
    assert accepted["bios_program"] == "pxelinux.0"
