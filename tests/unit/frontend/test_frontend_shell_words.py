"""Docker's word expansion. Expected values marked "BuildKit" were checked against the
tables in moby/buildkit ``frontend/dockerfile/shell`` (envVarTest, wordsTest, lex_test.go)."""

from __future__ import annotations

import dockerfile
import pytest

from kiln.frontend.shell_words import (
    PREDEFINED_ARGS,
    WordError,
    WordExpander,
    parse_key_values,
    split_arg_definitions,
)

ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}
WORDS = WordExpander()

# (word, expected) with ENV above; "error" means WordError (BuildKit envVarTest)
EXPAND_CASES = [
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he\\'llo", "he'llo"),
    ("abc\\tdef", "abctdef"),
    ('"abc\\tdef"', "abc\\tdef"),
    ('"abc\\\\tdef"', "abc\\tdef"),
    ("'abc\\tdef'", "abc\\tdef"),
    ("hello\\", "hello"),
    ("hello\\\\", "hello\\"),
    ('"hel\'lo"', "hel'lo"),
    ("'hello\\'", "hello\\"),
    ("'hello\\\\there'", "hello\\\\there"),
    ("\"''\"", "''"),
    ("$.", "$."),
    ("he$1x", "hex"),
    ("he$.x", "he$.x"),
    ("he$pwd.", "he."),
    ("he$PWD", "he/home"),
    ("he\\$PWD", "he$PWD"),
    ("he\\\\$PWD", "he\\/home"),
    ('"he\\$PWD"', "he$PWD"),
    ('"he\\\\$PWD"', "he\\/home"),
    ("\\${}", "${}"),
    ("he\\${}xx", "he${}xx"),
    ("he${hi}xx", "hexx"),
    ("he${PWD}", "he/home"),
    ("he${XXX:-000}xx", "he000xx"),
    ("he${PWD:-000}xx", "he/homexx"),
    ("he${XXX:-$PWD}xx", "he/homexx"),
    ("he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
    ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${PWD?}", "he/home"),
    ("he${NULL?}", "he"),
    ("he${XXX:+${PWD}}xx", "hexx"),
    ("he${PWD:+${SHELL}}xx", "hebashxx"),
    ("he${PWD:+000}xx", "he000xx"),
    ("'he${XX}'", "he${XX}"),
    ("\"he'$PWD'\"", "he'/home'"),
    ("'\\$PWD'", "\\$PWD"),
    ("'\"hello\"'", '"hello"'),
    ("he${PWD:+${PWD}:}xx", "he/home:xx"),
    ("he${XXX:-\\$PWD:}xx", "he$PWD:xx"),
    ("he${XXX:-\\${PWD}z}xx", "he${PWDz}xx"),
    ("안'녕'하세요", "안녕하세요"),
    ("안녕$KOREAN", "안녕한국어"),
    ("${aaa}}", "}"),
    ("${aaa:-bbb}}", "bbb}"),
    ("${aaa:-${bbb:-ccc}}", "ccc"),
    ("${aaa:-bbb {foo}", "bbb {foo"),
    ("$1", ""),
    ("${999:-bbb}aaa", "bbbaaa"),
    ("$001aaa", "aaa"),
    ("$@@@", "@@"),
    ("${@:-bbb}", "bbb"),
    ("$$", ""),
    ("${#:+bbb}", ""),
    ("${0:-bbb}", "bbb"),
    # errors
    ("he'llo", "error"),
    ("he\\\\'llo", "error"),
    ('"hello', "error"),
    ('"hello\\"', "error"),
    ("${}", "error"),
    ("he${}xx", "error"),
    ("he${.}", "error"),
    ("he${XXX:YYY}", "error"),
    ("he${XXX?}", "error"),
    ("he${XXX:?}", "error"),
    ("he${NULL:?}", "error"),
    ("he${PWD", "error"),
    ("he${PWD:=000}xx", "error"),
    ("${{aaa}", "error"),
    ("${aaa", "error"),
    ("${aaa:-bbb", "error"),
    ("${aaa:-bbb ${foo}", "error"),
    ("${:}", "error"),
    ("${:-bbb}", "error"),
]


@pytest.mark.parametrize(("word", "expected"), EXPAND_CASES)
def test_expand_matches_buildkit_table(word: str, expected: str) -> None:
    if expected == "error":
        with pytest.raises(WordError):
            WORDS.expand(word, ENV)
    else:
        assert WORDS.expand(word, ENV) == expected


# (word, env, expected) from BuildKit's TestProcessWithMatches; None means an error
MODIFIER_CASES: list[tuple[str, dict[str, str], str | None]] = [
    ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx  ccc"),
    ("${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}", {"FOO": "xxx", "BAR": ""}, "xxx bbb ccc"),
    ("${FOO:-}", {}, ""),
    ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa bbb "),
    ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", {"FOO": "xxx", "BAR": ""}, "aaa  "),
    ("${BAR?bbb}", {"BAR": ""}, ""),
    ("${BAZ?ccc}", {}, None),
    ("${BAR:?bbb}", {"BAR": ""}, None),
    ("${FOO=aaa}", {"FOO": "xxx"}, None),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x"),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx"),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y"),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy"),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy"),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y"),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy."),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a"),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy"),
    ("${FOO:#}", {}, None),
    ("${FOO:%%}", {}, None),
    ("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
     "/foo.*/*.txt - /foo..*.txt"),
    ("${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}", {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
     "/tmp/bar.txt - /bar.txt"),
    ("${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
     {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"}, "/foo/b/c.txt - /foo/c.txt"),
    ("${FOO/$NEEDLE/$REPLACEMENT}",
     {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
     "https://google.de"),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt"),
    ("${FOO//ww}", {"FOO": "xxyy"}, None),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy"),
    ("${FOO///}", {}, ""),
    ("something-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tar.gz",
     {"V": "v1", "OS": "linux", "ARCH": "arm", "VARIANT": "v7"},
     "something-v1.linux-arm-v7.tar.gz"),
    ("something-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tar.gz",
     {"V": "v1", "OS": "linux", "ARCH": "arm64", "VARIANT": ""}, "something-v1.linux-arm64.tar.gz"),
]  # fmt: skip


@pytest.mark.parametrize(("word", "env", "expected"), MODIFIER_CASES)
def test_modifiers_match_buildkit(word: str, env: dict[str, str], expected: str | None) -> None:
    if expected is None:
        with pytest.raises(WordError):
            WORDS.expand(word, env)
    else:
        assert WORDS.expand(word, env) == expected


def test_required_variable_messages() -> None:
    # BuildKit's TestShellParserMandatoryEnvVars: the message is expanded too
    assert WORDS.expand("${VAR:?message here$ARG}", {"VAR": "plain", "ARG": "x"}) == "plain"
    with pytest.raises(WordError, match="VAR: message herex"):
        WORDS.expand("${VAR:?message here$ARG}", {"VAR": "", "ARG": "x"})
    with pytest.raises(WordError, match="VAR: message herex"):
        WORDS.expand("${VAR?message here$ARG}", {"ARG": "x"})
    assert WORDS.expand("${VAR?message here$ARG}", {"VAR": "", "ARG": "x"}) == ""
    with pytest.raises(WordError, match="X: is not allowed to be unset"):
        WORDS.expand("${X?}", {})
    with pytest.raises(WordError, match="X: is not allowed to be empty"):
        WORDS.expand("${X:?}", {"X": ""})


def test_error_names_the_word() -> None:
    with pytest.raises(WordError, match=r'failed to process "a\$\{b": syntax error'):
        WORDS.expand("a${b", {})
    assert isinstance(WordError("x"), ValueError)


# (word, env, expected fields) from BuildKit's wordsTest
SPACE_ENV = {"hi": "hi", "space": "abc  def", "leading": "  ab c", "trailing": "ab c   "}
WORDS_CASES = [
    ("hello", ["hello"]),
    ("hello${hi}bye", ["hellohibye"]),
    ("hello${space}bye", ["helloabc", "defbye"]),
    ('hello"${space}"bye', ["helloabc  defbye"]),
    ('hello "${space}"bye', ["hello", "abc  defbye"]),
    ("hello${leading}def", ["hello", "ab", "cdef"]),
    ('hello"${leading}" def', ["hello  ab c", "def"]),
    ("hello${trailing}d", ["helloab", "c", "d"]),
    ('hel"lo${trailing}"', ["helloab c   "]),
    ('hello" there  "', ["hello there  "]),
    ("hello there     ", ["hello", "there"]),
    ("hello\\ there", ["hello there"]),
    ('hello\\" there', ['hello"', "there"]),
    ("hello'\\\\there'", ["hello\\\\there"]),
    ("hello'$there'", ["hello$there"]),
    ("", []),
    ('""', []),
]


@pytest.mark.parametrize(("word", "expected"), WORDS_CASES)
def test_expand_words_matches_buildkit(word: str, expected: list[str]) -> None:
    assert WORDS.expand_words(word, SPACE_ENV) == expected


def test_expand_words_default_inside_a_word_keeps_the_prefix() -> None:
    assert WORDS.expand_words("a${X:-1 2}c d", {}) == ["a1", "2c", "d"]
    assert WORDS.expand_words("80/tcp ${P:-443}/udp", {}) == ["80/tcp", "443/udp"]


def test_expand_words_unbalanced_quote_is_an_error() -> None:
    with pytest.raises(WordError):
        WORDS.expand_words('hello" there', {})


def test_backtick_escape() -> None:
    words = WordExpander("`")
    assert words.expand("C:\\path\\to", {}) == "C:\\path\\to"
    assert words.expand("a` b", {}) == "a b"
    assert words.expand("`$HOME", {"HOME": "/root"}) == "$HOME"
    assert words.expand('"say `"hi`""', {}) == 'say "hi"'
    assert words.expand_words("a` b c", {}) == ["a b", "c"]
    with pytest.raises(ValueError, match="one character"):
        WordExpander("ab")


def test_unicode_names_and_heredoc_markers() -> None:
    assert WORDS.expand("$ÄBC-x", {"ÄBC": "1"}) == "1-x"
    assert WORDS.expand("cat <<EOF", {}) == "cat <<EOF"
    assert WORDS.expand_words("cat << EOF > $F", {"F": "out"}) == ["cat", "<< EOF", ">", "out"]


def test_predefined_args() -> None:
    assert {"HTTP_PROXY", "https_proxy", "NO_PROXY", "all_proxy", "FTP_PROXY"} <= PREDEFINED_ARGS
    assert len(PREDEFINED_ARGS) == 10
    assert "PATH" not in PREDEFINED_ARGS


# ---------------------------------------------------------------------------- key/value lists


def _values(line: str) -> tuple[str, ...]:
    (command,) = dockerfile.parse_string(line + "\n")
    return tuple(command.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ENV a b c", [("a", "b c")]),
        ("ENV a  b   c  ", [("a", "b   c")]),
        ('ENV A "x y" z', [("A", "x y z")]),
        ('ENV x=1 y="2 3"', [("x", "1"), ("y", "2 3")]),
        ("ENV a=b\\ c", [("a", "b c")]),
        ('ENV "e f"=g', [("e f", "g")]),
        ("ENV q=", [("q", "")]),
        ("ENV p=$OLD/bin:$PATH", [("p", "old/bin:/usr/bin")]),
        ("ENV OLD=new x=$OLD", [("OLD", "new"), ("x", "old")]),
        ('LABEL a=b "c d"=e', [("a", "b"), ("c d", "e")]),
        ("LABEL q='a b'", [("q", "a b")]),
        ("LABEL $KEY=${OLD}1", [("k", "old1")]),
    ],
)
def test_parse_key_values_from_parser_output(line: str, expected: list[tuple[str, str]]) -> None:
    env = {"OLD": "old", "PATH": "/usr/bin", "KEY": "k"}
    instruction = line.split()[0]
    assert parse_key_values(_values(line), WORDS, env, instruction=instruction) == expected


def test_parse_key_values_errors() -> None:
    with pytest.raises(WordError, match="ENV names can not be blank"):
        parse_key_values(_values("ENV =x"), WORDS, {}, instruction="ENV")
    with pytest.raises(WordError, match="must have two arguments"):
        parse_key_values(("a", "b", "c"), WORDS, {}, instruction="LABEL")
    with pytest.raises(WordError, match="expands to nothing"):
        parse_key_values(("$NOPE", "1"), WORDS, {}, instruction="ENV")
    with pytest.raises(WordError, match="failed to process"):
        parse_key_values(("a", '"unterminated'), WORDS, {}, instruction="ENV")
    with pytest.raises(ValueError, match="split_arg_definitions"):
        parse_key_values(("a=1",), WORDS, {}, instruction="ARG")


def test_split_arg_definitions() -> None:
    assert split_arg_definitions(_values('ARG Y="q r"')) == [("Y", '"q r"')]
    assert split_arg_definitions(_values("ARG A=1 B")) == [("A", "1"), ("B", None)]
    assert split_arg_definitions(_values("ARG q=$x")) == [("q", "$x")]
    assert split_arg_definitions(("E=",)) == [("E", "")]
    assert WORDS.expand('"q r"', {}) == "q r"
    with pytest.raises(WordError, match="ARG names can not be blank"):
        split_arg_definitions(("=1",))
    with pytest.raises(WordError, match="at least one"):
        split_arg_definitions(())
