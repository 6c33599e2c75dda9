//! Resolves a Docker `USER` value (`name`, `uid`, `name:group`, `uid:gid`, ...) against the
//! image's own `/etc/passwd` and `/etc/group` text, as runc's `GetExecUser` does: names must
//! exist, bare numbers need not; supplementary groups are the groups that list the user's name.
//!
//! Pure text in, numbers out: the caller reads the files (inside the container's root).

/// The credentials a container process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser { name: String },
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup { name: String },
    #[error("invalid user specification {spec:?}")]
    Invalid { spec: String },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields.get(5).copied().unwrap_or(""),
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 || line.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: fields[0],
            gid: fields[2].parse().ok()?,
            members: fields
                .get(3)
                .map(|members| members.split(',').filter(|m| !m.is_empty()).collect())
                .unwrap_or_default(),
        })
    })
}

/// Resolves `spec` (empty means root). `passwd`/`group` are the image's files ("" if absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ExecUser, UserError> {
    let spec_trimmed = spec.trim();
    let (user_part, group_part) = match spec_trimmed.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec_trimmed, None),
    };
    if group_part == Some("") {
        return Err(UserError::Invalid { spec: spec.into() });
    }
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let numeric_uid: Option<u32> = user_part.parse().ok();
    let entry = passwd_entries(passwd).find(|entry| match numeric_uid {
        Some(uid) => entry.uid == uid,
        None => entry.name == user_part,
    });
    let (uid, mut gid, home, name) = match (numeric_uid, entry) {
        (_, Some(entry)) => (
            entry.uid,
            entry.gid,
            entry.home.to_string(),
            Some(entry.name.to_string()),
        ),
        (Some(uid), None) => (uid, 0, "/".to_string(), None),
        (None, None) => {
            return Err(UserError::UnknownUser {
                name: user_part.into(),
            })
        }
    };
    if let Some(group_part) = group_part {
        gid = match group_part.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|entry| entry.name == group_part)
                .map(|entry| entry.gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    name: group_part.into(),
                })?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = &name {
        for entry in group_entries(group) {
            if entry.members.contains(&name.as_str()) && !groups.contains(&entry.gid) {
                groups.push(entry.gid);
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nkiln:x:1000:1000:kiln:/home/kiln:/bin/sh\n";
    const GROUP: &str = "root:x:0:\ndaemon:x:1:kiln\nkiln:x:1000:\nstaff:x:50:other,kiln\n";

    fn check(spec: &str, expect: Result<(u32, u32, &[u32], &str), UserError>) {
        let got = resolve(spec, PASSWD, GROUP);
        let expect = expect.map(|(uid, gid, groups, home)| ExecUser {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        });
        assert_eq!(got, expect, "spec {spec:?}");
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        check("", Ok((0, 0, &[0], "/root")));
        check("root", Ok((0, 0, &[0], "/root")));
        check("kiln", Ok((1000, 1000, &[1000, 1, 50], "/home/kiln")));
        check("1000", Ok((1000, 1000, &[1000, 1, 50], "/home/kiln")));
        check("kiln:daemon", Ok((1000, 1, &[1, 50], "/home/kiln")));
        check("kiln:7", Ok((1000, 7, &[7, 1, 50], "/home/kiln")));
        check("4242", Ok((4242, 0, &[0], "/")));
        check("4242:4243", Ok((4242, 4243, &[4243], "/")));
    }

    #[test]
    fn rejects_unknown_names() {
        check(
            "nobody-here",
            Err(UserError::UnknownUser {
                name: "nobody-here".into(),
            }),
        );
        check(
            "kiln:nogroup",
            Err(UserError::UnknownGroup {
                name: "nogroup".into(),
            }),
        );
        check(
            "kiln:",
            Err(UserError::Invalid {
                spec: "kiln:".into(),
            }),
        );
        assert_eq!(
            resolve("ghost", "", "").unwrap_err().to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
    }
}
