//! Which Dockerfile instructions the builder expands `$VAR` references in, and how.
//!
//! From the Dockerfile reference ("Environment replacement"): ADD, COPY, ENV, EXPOSE, FROM,
//! LABEL, STOPSIGNAL, USER, VOLUME and WORKDIR are expanded by the builder, and ONBUILD only
//! "when combined with one of the supported instructions above", i.e. when the trigger runs
//! in a child build. RUN, CMD and ENTRYPOINT leave `$VAR` to the command shell at run time
//! (the exec form gets no substitution at all). BuildKit adds ARG (`ARG B=$A` expands its
//! default) and the flags of RUN (`--mount=...,target=$DIR`, `--network`, `--security`).
//!
//! This module knows instruction keywords only, not their argument syntax; the planner applies
//! the answer to the parsed instruction.

/// How the builder treats variable references in an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VariableExpansion {
    /// Each argument is expanded as one word ([`super::ShellLex::process_word`]): ADD and
    /// COPY sources, destination and `--chown`; ENV and LABEL keys and values; ARG names and
    /// defaults; FROM (with the global ARGs declared before the first FROM only, and its
    /// `--platform`); STOPSIGNAL, USER, VOLUME, WORKDIR. The bodies of ADD/COPY heredocs with
    /// an unquoted delimiter are expanded too, with [`super::ShellLex::for_heredoc`].
    EachWord,
    /// Each argument is expanded and then split into words
    /// ([`super::ShellLex::process_words`]): EXPOSE, so `EXPOSE $PORTS` with `PORTS="80 443"`
    /// exposes two ports. The only instruction that splits.
    SplitWords,
    /// Only the values of the instruction's `--flags` are expanded; the command itself reaches
    /// the shell (or, in exec form, the program) as written: RUN.
    FlagsOnly,
    /// The builder never expands: CMD, ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER, and ONBUILD,
    /// whose trigger is expanded only when it runs in a build that uses this image as its base.
    Never,
}

/// How `keyword` (any case, e.g. `copy` or `COPY`) is expanded; `None` for a word that is not
/// a Dockerfile instruction.
pub fn variable_expansion(keyword: &str) -> Option<VariableExpansion> {
    const EACH_WORD: [&str; 10] = [
        "ADD",
        "ARG",
        "COPY",
        "ENV",
        "FROM",
        "LABEL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    ];
    const NEVER: [&str; 6] = [
        "CMD",
        "ENTRYPOINT",
        "SHELL",
        "HEALTHCHECK",
        "MAINTAINER",
        "ONBUILD",
    ];
    let is = |name: &&str| keyword.eq_ignore_ascii_case(name);
    if keyword.eq_ignore_ascii_case("EXPOSE") {
        Some(VariableExpansion::SplitWords)
    } else if EACH_WORD.iter().any(is) {
        Some(VariableExpansion::EachWord)
    } else if keyword.eq_ignore_ascii_case("RUN") {
        Some(VariableExpansion::FlagsOnly)
    } else if NEVER.iter().any(is) {
        Some(VariableExpansion::Never)
    } else {
        None
    }
}

/// Whether the builder expands variables in the arguments of `keyword` (any case). RUN is
/// `false`: only its flags are expanded, see [`variable_expansion`].
pub fn expands_variables(keyword: &str) -> bool {
    matches!(
        variable_expansion(keyword),
        Some(VariableExpansion::EachWord | VariableExpansion::SplitWords)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(keyword: &str, expect: Option<VariableExpansion>) {
        assert_eq!(variable_expansion(keyword), expect, "{keyword}");
        let expands = matches!(
            expect,
            Some(VariableExpansion::EachWord | VariableExpansion::SplitWords)
        );
        assert_eq!(expands_variables(keyword), expands, "{keyword}");
    }

    #[test]
    fn reference_list_is_expanded() {
        for keyword in [
            "ADD",
            "COPY",
            "ENV",
            "FROM",
            "LABEL",
            "STOPSIGNAL",
            "USER",
            "VOLUME",
            "WORKDIR",
            "ARG",
        ] {
            check(keyword, Some(VariableExpansion::EachWord));
        }
        check("EXPOSE", Some(VariableExpansion::SplitWords));
    }

    #[test]
    fn shell_commands_and_deferred_triggers_are_not() {
        check("RUN", Some(VariableExpansion::FlagsOnly));
        for keyword in [
            "CMD",
            "ENTRYPOINT",
            "SHELL",
            "HEALTHCHECK",
            "MAINTAINER",
            "ONBUILD",
        ] {
            check(keyword, Some(VariableExpansion::Never));
        }
    }

    #[test]
    fn keywords_are_case_insensitive_and_unknown_ones_are_none() {
        check("copy", Some(VariableExpansion::EachWord));
        check("Expose", Some(VariableExpansion::SplitWords));
        check("run", Some(VariableExpansion::FlagsOnly));
        check("RUNN", None);
        check("", None);
        check("COPY ", None);
    }
}
