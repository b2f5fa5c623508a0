"""The snaplab CLI without a real snapshotter: argument parsing, the text
layouts of ctr (tabwriter columns, tree, human sizes) and the verb logic over
a fake snapshotter."""

import io
import json
import os

import pytest

from snaplab import cli
from snaplab import ctr_output
from snaplab import errors
from snaplab import verbs
from snaplab.labels import GC_ROOT
from snaplab.types import Info, Kind, Mount, Usage


def parse(*argv, env=None):
    return cli.parse_args(list(argv), environ=env or {})


# -- global options ----------------------------------------------------------


def test_defaults_come_from_the_environment_then_built_ins():
    _, settings = parse("ls")
    assert settings.root == "/var/lib/snaplab"
    assert settings.backend == "overlay"
    assert settings.options == {}
    assert settings.json is False
    _, settings = parse("ls", env={"SNAPLAB_ROOT": "/srv/r", "SNAPLAB_BACKEND": "native"})
    assert (settings.root, settings.backend) == ("/srv/r", "native")


def test_command_line_beats_environment():
    _, settings = parse("--root", "/a", "--backend", "native", "ls",
                        env={"SNAPLAB_ROOT": "/srv/r", "SNAPLAB_BACKEND": "overlay"})
    assert (settings.root, settings.backend) == ("/a", "native")


def test_global_options_after_the_verb():
    args, settings = parse("ls", "--root", "/b", "--backend", "overlay", "--json",
                           "--option", "async_remove=true")
    assert args.verb == "ls"
    assert settings.root == "/b"
    assert settings.backend == "overlay"
    assert settings.json is True
    assert settings.options == {"async_remove": True}


def test_after_the_verb_wins_and_options_add_up():
    _, settings = parse("--root", "/a", "--option", "mount_options=a,b", "ls", "--root", "/c",
                        "--option", "mount_options=c", "--option", "upperdir_label=no")
    assert settings.root == "/c"
    assert settings.options == {"mount_options": ["a", "b", "c"], "upperdir_label": False}


@pytest.mark.parametrize("text,expected", [
    ("async_remove=true", {"async_remove": True}),
    ("async_remove=Yes", {"async_remove": True}),
    ("async_remove=0", {"async_remove": False}),
    ("upperdir_label=off", {"upperdir_label": False}),
    ("mount_options=", {"mount_options": []}),
    ("mount_options=nodev", {"mount_options": ["nodev"]}),
    ("mount_options=nodev, noexec", {"mount_options": ["nodev", "noexec"]}),
    ("mount_options=lowerdir=x", {"mount_options": ["lowerdir=x"]}),
])
def test_backend_options_are_typed_by_the_backends_declaration(text, expected):
    _, settings = parse("--option", text, "ls")
    assert settings.options == expected


@pytest.mark.parametrize("argv", [
    ("--option", "async_remove"), ("--option", "=true"), ("--option", "async_remove=maybe"),
    ("--option", "upperdir_label=2"), ("--option", "other=on"),
    ("--backend", "native", "--option", "async_remove=true"),
])
def test_bad_backend_options_are_invalid_arguments(argv):
    with pytest.raises(errors.InvalidArgument):
        parse(*argv, "ls")


# -- verbs and their arguments -------------------------------------------------


@pytest.mark.parametrize("alias,verb", [
    ("rm", "rm"), ("del", "rm"), ("delete", "rm"), ("remove", "rm"),
    ("ls", "ls"), ("list", "ls"), ("mounts", "mounts"), ("m", "mounts"),
])
def test_ctr_aliases(alias, verb):
    argv = {"rm": [alias, "k"], "ls": [alias], "mounts": [alias, "/t", "k"]}[verb]
    args, _ = parse(*argv)
    assert args.handler is getattr(cli, "cmd_" + verb)


def test_prepare_arguments():
    args, _ = parse("prepare", "-t", "/mnt", "--mounts", "--label", "a=b", "--label", "c=",
                    "key", "parent")
    assert (args.key, args.parent, args.target, args.mounts) == ("key", "parent", "/mnt", True)
    assert verbs.parse_labels(args.label) == {"a": "b", "c": ""}
    args, _ = parse("view", "key")
    assert args.parent is None and args.target is None and args.mounts is False


def test_other_verbs_arguments():
    assert parse("commit", "name", "key")[0].name == "name"
    assert parse("rm", "a", "b", "c")[0].keys == ["a", "b", "c"]
    args, _ = parse("usage", "-b", "x", "y")
    assert args.bytes is True and args.keys == ["x", "y"]
    assert parse("usage")[0].keys == []
    args, _ = parse("label", "n", "a=1", "b=")
    assert (args.name, args.labels) == ("n", ["a=1", "b="])
    assert parse("ls", "-f", "kind==committed", "--filter", "name==x")[0].filter == [
        "kind==committed", "name==x"]
    assert parse("mount", "/t", "k")[0].handler is verbs.cmd_mount
    assert parse("umount", "/t")[0].handler is verbs.cmd_umount
    assert parse("cleanup")[0].handler is verbs.cmd_cleanup


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["prepare"], ["prepare", "a", "b", "c"], ["commit", "only"],
    ["rm"], ["info"], ["mounts", "t"], ["ls", "--nope"], ["--root"],
    ["prepare", "--mount", "k"],  # no abbreviations
    ["ls", "--root", ""], ["--backend", "", "ls"],
])
def test_usage_errors_are_invalid_arguments(argv):
    with pytest.raises(cli.UsageError) as caught:
        parse(*argv)
    assert isinstance(caught.value, errors.InvalidArgument)
    assert caught.value.exit_code == errors.InvalidArgument.exit_code
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["novalue", "=v", ""])
def test_bad_label_syntax(text):
    with pytest.raises(errors.InvalidArgument):
        verbs.parse_label(text)


def test_label_values_may_hold_equal_signs():
    assert verbs.parse_label("a=b=c") == ("a", "b=c")


def test_gc_root_value_is_rfc3339_seconds_utc():
    import re
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", verbs.gc_root_label())


# -- layouts -----------------------------------------------------------------


@pytest.mark.parametrize("size,text", [
    (0, "0.0 B"),
    (1, "1.0 B"),
    (1023, "1023.0 B"),
    (1024, "1.0 KiB"),
    (4096, "4.0 KiB"),
    (1536, "1.5 KiB"),
    (int(7.6 * 1024 * 1024), "7.6 MiB"),
    (1024 ** 3, "1.0 GiB"),
    (5 * 1024 ** 4, "5.0 TiB"),
    (1024 ** 8, "1.0 YiB"),
    (2048 * 1024 ** 8, "2048.0 YiB"),
    (1048575, "1024.0 KiB"),  # below 1 MiB stays KiB even when it rounds up
])
def test_human_size_matches_go_units(size, text):
    assert ctr_output.human_size(size) == text


def info(name, parent="", kind=Kind.COMMITTED, labels=None):
    return Info(kind=kind, name=name, parent=parent, labels=labels or {},
                created=1_700_000_000_123_456_789, updated=1_700_000_000_123_456_789)


def test_tabulate_like_go_tabwriter():
    assert ctr_output.tabulate([("KEY", "PARENT", "KIND"), ("a", "", "Active")]) == (
        "KEY PARENT KIND   \n"
        "a          Active \n")


def test_list_layout():
    infos = [info("base"), info("layer-two", "base"),
             info("c", "layer-two", Kind.ACTIVE), info("v", "base", Kind.VIEW)]
    assert ctr_output.format_list(infos) == (
        "KEY       PARENT    KIND      \n"
        "base                Committed \n"
        "layer-two base      Committed \n"
        "c         layer-two Active    \n"
        "v         base      View      \n")


def test_empty_list_is_just_the_header():
    assert ctr_output.format_list([]) == "KEY PARENT KIND \n"


def test_usage_layout():
    entries = [("sha256:aaa", Usage(size=7969177, inodes=521)), ("c", Usage(4096, 1)),
               ("v", Usage())]
    assert ctr_output.format_usage(entries) == (
        "KEY        SIZE    INODES \n"
        "sha256:aaa 7.6 MiB 521    \n"
        "c          4.0 KiB 1      \n"
        "v          0.0 B   0      \n")
    assert ctr_output.format_usage(entries, raw=True) == (
        "KEY        SIZE    INODES \n"
        "sha256:aaa 7969177 521    \n"
        "c          4096    1      \n"
        "v          0       0      \n")


def test_tree_layout():
    infos = [info("a"), info("b", "a"), info("c", "b", Kind.ACTIVE), info("d", "a", Kind.VIEW),
             info("z")]
    assert ctr_output.format_tree(infos) == (
        " a\n"
        "  \\_ b\n"
        "    \\_ c\n"
        "  \\_ d\n"
        " z\n")


def test_tree_placeholder_parents_keep_first_seen_order():
    # Walk order is key order: a child may come before its parent.
    infos = [info("a-child", "p"), info("b"), info("p")]
    assert ctr_output.format_tree(infos) == " p\n  \\_ a-child\n b\n"
    # A parent the walk never returns (a filtered walk) still prints as a root.
    assert ctr_output.format_tree([info("c", "gone", Kind.ACTIVE)]) == " gone\n  \\_ c\n"
    assert ctr_output.format_tree([]) == ""


def test_tree_json():
    infos = [info("a-child", "p", Kind.ACTIVE), info("p"), info("x", "missing")]
    tree = ctr_output.tree_json(infos)
    assert [node["Name"] for node in tree] == ["p", "missing"]
    assert tree[0]["Kind"] == "Committed"
    assert tree[0]["Children"][0]["Name"] == "a-child"
    assert tree[0]["Children"][0]["Kind"] == "Active"
    assert tree[0]["Children"][0]["Children"] == []
    assert tree[1] == {"Name": "missing", "Children": [dict(infos[2].to_dict(), Children=[])]}


def test_labels_text():
    assert ctr_output.format_labels({"b": "2", "a": "1"}) == "a=1,b=2\n"
    assert ctr_output.format_labels({}) == "\n"


def test_go_json_escapes_html_like_go_and_indents_four():
    text = ctr_output.go_json({"Labels": {"a": "<b>&é"}})
    assert text == '{\n    "Labels": {\n        "a": "\\u003cb\\u003e\\u0026é"\n    }\n}\n'
    assert json.loads(text) == {"Labels": {"a": "<b>&é"}}


# -- verbs over a fake snapshotter ----------------------------------------------


class FakeSnapshotter:
    def __init__(self, infos=(), fail_remove=None, cleanup_error=None):
        self.infos = {i.name: i for i in infos}
        self.calls = []
        self.fail_remove = fail_remove or {}
        self.cleanup_error = cleanup_error
        self.closed = 0

    def _get(self, key):
        if key not in self.infos:
            raise errors.NotFound("snapshot %r does not exist" % key)
        return self.infos[key]

    def stat(self, key):
        return self._get(key)

    def update(self, new, *paths):
        self.calls.append(("update", new.name, dict(new.labels), paths))
        stored = self._get(new.name)
        for path in paths:
            name = path[len("labels."):]
            stored.labels[name] = new.labels.get(name, "")
        stored.labels = {k: v for k, v in stored.labels.items() if v}
        return stored

    def usage(self, key):
        self._get(key)
        return Usage(size=4096, inodes=1)

    def mounts(self, key):
        self._get(key)
        return [Mount("bind", "/src/" + key, options=["rbind", "ro"])]

    def prepare(self, key, parent="", labels=None):
        self.calls.append(("prepare", key, parent, dict(labels or {})))
        return [Mount("overlay", "overlay", options=["lowerdir=/l"])]

    def view(self, key, parent="", labels=None):
        self.calls.append(("view", key, parent, dict(labels or {})))
        return [Mount("bind", "/v", options=["ro", "rbind"])]

    def commit(self, name, key, labels=None, parent=None):
        self.calls.append(("commit", name, key, dict(labels or {})))
        self.infos[name] = info(name, labels=labels)

    def remove(self, key):
        if key in self.fail_remove:
            raise self.fail_remove[key]
        self._get(key)
        self.calls.append(("remove", key))
        del self.infos[key]

    def list(self, *filters):
        self.calls.append(("list", filters))
        return list(self.infos.values())

    def cleanup(self):
        self.calls.append(("cleanup",))
        if self.cleanup_error:
            raise self.cleanup_error

    def close(self):
        self.closed += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run(fake, *argv):
    out = io.StringIO()

    class Opener:
        def __init__(self, settings):
            self.settings = settings

        def __call__(self, create, read_only=False):
            fake.create = create
            fake.read_only = read_only
            return fake

    code = cli.run(list(argv), out=out, environ={}, opener_factory=Opener)
    return code, out.getvalue()


def test_prepare_adds_gc_root_and_user_labels_and_prints_mounts():
    fake = FakeSnapshotter()
    code, out = run(fake, "prepare", "--label", "a=b", "-t", "/mnt", "--mounts", "k", "p")
    assert code == 0
    verb, key, parent, labels = fake.calls[0]
    assert (verb, key, parent) == ("prepare", "k", "p")
    assert set(labels) == {GC_ROOT, "a"}
    lines = out.splitlines()
    assert lines[0] == "mount -t overlay overlay /mnt -o lowerdir=/l"
    assert json.loads("\n".join(lines[1:])) == [
        {"Type": "overlay", "Source": "overlay", "Target": "", "Options": ["lowerdir=/l"]}]
    assert fake.create is True and fake.closed == 1


def test_prepare_prints_nothing_by_default_and_json_with_json():
    fake = FakeSnapshotter()
    assert run(fake, "prepare", "k") == (0, "")
    code, out = run(fake, "--json", "prepare", "-t", "/mnt", "k2")
    assert json.loads(out)[0]["Type"] == "overlay"


def test_view_has_no_gc_root_label():
    fake = FakeSnapshotter()
    run(fake, "view", "v", "p")
    assert fake.calls[0] == ("view", "v", "p", {})


def test_explicit_gc_root_label_wins():
    fake = FakeSnapshotter()
    run(fake, "prepare", "--label", GC_ROOT + "=keep", "k")
    assert fake.calls[0][3] == {GC_ROOT: "keep"}


@pytest.mark.parametrize("argv", [
    ["prepare", ""], ["prepare", "k", ""], ["view", "", "p"], ["commit", "", "k"],
    ["commit", "n", ""], ["rm", "a", ""], ["info", ""], ["label", ""], ["usage", ""],
    ["mounts", "/t", ""], ["prepare", "--label", "bad", "k"], ["label", "n", "bad"],
    ["commit", "--label", "=x", "n", "k"],
])
def test_bad_input_changes_nothing(argv):
    fake = FakeSnapshotter([info("a", kind=Kind.ACTIVE), info("n")])
    with pytest.raises(errors.InvalidArgument):
        run(fake, *argv)
    assert [c for c in fake.calls if c[0] != "list"] == []


def test_commit_sets_gc_root_and_json_returns_the_info():
    fake = FakeSnapshotter()
    code, out = run(fake, "--json", "commit", "--label", "x=y", "n", "k")
    assert fake.calls[0][:3] == ("commit", "n", "k")
    assert set(fake.calls[0][3]) == {GC_ROOT, "x"}
    assert json.loads(out)["Name"] == "n"
    assert run(fake, "commit", "n2", "k") == (0, "")


def test_rm_stops_at_the_first_failure_keeping_its_exit_code():
    blocked = errors.FailedPrecondition("cannot remove snapshot 'b' with child 'c'")
    fake = FakeSnapshotter([info("a"), info("b"), info("c")], fail_remove={"b": blocked})
    with pytest.raises(cli.Failure) as caught:
        run(fake, "rm", "a", "b", "c")
    assert str(caught.value) == 'failed to remove "b": ' + str(blocked)
    assert caught.value.exit_code == errors.FailedPrecondition.exit_code
    assert fake.calls == [("remove", "a")]
    assert "c" in fake.infos


def test_rm_json_lists_what_was_removed_even_on_failure(capsys):
    fake = FakeSnapshotter([info("a")])
    code, out = run(fake, "--json", "rm", "a")
    assert json.loads(out) == {"removed": ["a"]}
    out = io.StringIO()
    with pytest.raises(cli.Failure):
        cli.run(["--json", "rm", "missing"], out=out, environ={},
                opener_factory=lambda s: lambda create: fake)
    assert json.loads(out.getvalue()) == {"removed": []}


def test_ls_tree_info_usage_outputs():
    fake = FakeSnapshotter([info("a", labels={"k": "<v>"}), info("b", "a", Kind.ACTIVE)])
    assert run(fake, "ls")[1] == ctr_output.format_list(list(fake.infos.values()))
    assert run(fake, "tree")[1] == " a\n  \\_ b\n"
    assert run(fake, "ls", "-f", "kind==active")[0] == 0
    assert ("list", ("kind==active",)) in fake.calls
    code, out = run(fake, "info", "a")
    assert out.startswith('{\n    "Kind": "Committed",\n    "Name": "a",\n')
    assert "\\u003cv\\u003e" in out
    assert json.loads(run(fake, "--json", "info", "a")[1])["Labels"] == {"k": "<v>"}
    assert run(fake, "usage", "b")[1] == "KEY SIZE    INODES \nb   4.0 KiB 1      \n"
    assert json.loads(run(fake, "usage", "--json")[1]) == [
        {"key": "a", "size": 4096, "inodes": 1}, {"key": "b", "size": 4096, "inodes": 1}]
    assert json.loads(run(fake, "ls", "--json")[1])[1]["Parent"] == "a"
    assert json.loads(run(fake, "tree", "--json")[1])[0]["Children"][0]["Name"] == "b"


def test_usage_with_keys_and_filter_is_a_usage_error():
    with pytest.raises(cli.UsageError):
        run(FakeSnapshotter([info("a")]), "usage", "-f", "kind==active", "a")


def test_label_updates_only_the_named_labels():
    fake = FakeSnapshotter([info("n", labels={"keep": "1", "gone": "2"})])
    code, out = run(fake, "label", "n", "new=3", "gone=")
    assert fake.calls[0] == ("update", "n", {"new": "3", "gone": ""},
                             ("labels.new", "labels.gone"))
    assert out == "keep=1,new=3\n"
    code, out = run(fake, "label", "n")
    assert out == "keep=1,new=3\n"
    assert len([c for c in fake.calls if c[0] == "update"]) == 1  # no labels: just Stat
    assert json.loads(run(fake, "--json", "label", "n")[1])["Labels"] == {"keep": "1",
                                                                       "new": "3"}


def test_cleanup_not_implemented_is_a_note_not_a_failure(capsys):
    fake = FakeSnapshotter(cleanup_error=errors.NotImplemented("no cleanup here"))
    code, out = run(fake, "--json", "cleanup")
    assert code == 0
    assert json.loads(out) == {"cleanup": "not implemented"}
    assert "no cleanup here" in capsys.readouterr().err
    assert run(FakeSnapshotter(), "--json", "cleanup")[1] == '{\n  "cleanup": "done"\n}\n'


def test_mounts_prints_mount_commands():
    fake = FakeSnapshotter([info("a", kind=Kind.VIEW)])
    assert run(fake, "mounts", "/mnt/x", "a")[1] == "mount -t bind /src/a /mnt/x -o rbind,ro\n"
    assert json.loads(run(fake, "m", "--json", "/t", "a")[1])[0]["Source"] == "/src/a"


# -- main(): errors as one line and an exit code ------------------------------------


def test_main_usage_error_is_one_line_with_invalid_argument_code(capsys):
    assert cli.main(["prepare"]) == errors.InvalidArgument.exit_code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("snaplab: prepare: ")
    assert captured.err.count("\n") == 1


def test_main_help_exits_zero(capsys):
    assert cli.main(["--help"]) == 0
    assert "prepare" in capsys.readouterr().out


def test_main_unknown_backend(capsys, tmp_path):
    assert cli.main(["--root", str(tmp_path / "r"), "--backend", "nope", "ls"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("snaplab: unknown backend 'nope'") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_reading_verbs_do_not_create_a_root(capsys, tmp_path):
    root = str(tmp_path / "missing")
    for verb in (["ls"], ["info", "x"], ["rm", "x"], ["commit", "n", "x"], ["cleanup"],
                 ["usage"], ["tree"], ["label", "x", "a=b"]):
        assert cli.main(["--root", root] + verb) == errors.NotFound.exit_code, verb
        assert capsys.readouterr().err.startswith("snaplab: no snapshotter root at " + root)
    assert cli.main(["--root", root, "--backend", "nope", "ls"]) == 5
    assert not os.path.exists(root)


def test_describe_oserror():
    err = FileNotFoundError(2, "No such file or directory", "/x")
    assert cli.describe(err) == "No such file or directory: /x"
    assert cli.exit_code_of(err) == 1
    assert cli.exit_code_of(errors.AlreadyExists("x")) == 3
    assert cli.describe(errors.NotFound("a\nb")) == "a b"


def test_exit_codes_are_distinct():
    codes = [cls.exit_code for cls in errors.ALL]
    assert len(set(codes)) == len(codes)
    assert 1 not in codes and 0 not in codes


def test_help_lists_every_backends_options_and_the_exit_codes(capsys):
    from snaplab import backends
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in backends.BACKENDS:
        for option in backends.declared_options(name):
            assert "%s (%s, default " % (option.name, option.kind) in text
    for cls in errors.ALL:
        assert "  %d    %s" % (cls.exit_code, cls.__name__) in text


@pytest.mark.parametrize("verb", ["prepare", "view", "mounts", "commit", "rm", "ls", "tree",
                                  "info", "usage", "label", "cleanup", "doctor", "mount",
                                  "umount", "apply-layers", "apply-layer", "serve"])
def test_each_verb_help_says_what_it_prints_with_json(capsys, verb):
    assert cli.main([verb, "--help"]) == 0
    assert "\n--json: " in capsys.readouterr().out
