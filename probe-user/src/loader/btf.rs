//! A small reader of kernel BTF (/sys/kernel/btf/vmlinux): enough to resolve struct member
//! offsets (through anonymous structs and unions) and enumerator values at load time, so the
//! kernel programs never hard-code a struct layout.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
}

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Struct or union: byte size and members.
    Composite(u32, Vec<Member>),
    Enum(Vec<(u32, i64)>),
    /// typedef / const / volatile / restrict / type tag: points at another type.
    Alias(u32),
    /// A data section: (variable type id, offset in the section) per variable.
    DataSec(Vec<(u32, u32)>),
    Other,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: Kind,
}

/// Parsed BTF: types (index = type id) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |o: usize| -> Result<u16, BtfError> {
            data.get(o..o + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(BtfError::Malformed("truncated header"))
        };
        let u32_at = |o: usize| -> Result<u32, BtfError> {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(BtfError::Malformed("truncated"))
        };
        if u16_at(0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        if types_end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }

        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: Kind::Other,
        }];
        let mut o = types_start;
        while o < types_end {
            let name = u32_at(o)?;
            let info = u32_at(o + 4)?;
            let size_or_type = u32_at(o + 8)?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind_id = (info >> 24) & 0x1f;
            let kind_flag = info >> 31;
            let kind = match kind_id {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let raw = u32_at(m + 8)?;
                        members.push(Member {
                            name: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            bit_offset: if kind_flag == 1 { raw & 0xff_ffff } else { raw },
                        });
                    }
                    o += vlen * 12;
                    Kind::Composite(size_or_type, members)
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = o + i * 8;
                        let raw = u32_at(m + 4)?;
                        let v = if kind_flag == 1 {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        };
                        values.push((u32_at(m)?, v));
                    }
                    o += vlen * 8;
                    Kind::Enum(values)
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let v = u64::from(u32_at(m + 4)?) | (u64::from(u32_at(m + 8)?) << 32);
                        values.push((u32_at(m)?, v as i64));
                    }
                    o += vlen * 12;
                    Kind::Enum(values)
                }
                KIND_DATASEC => {
                    let mut vars = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = o + i * 12;
                        vars.push((u32_at(m)?, u32_at(m + 4)?));
                    }
                    o += vlen * 12;
                    Kind::DataSec(vars)
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Kind::Alias(size_or_type)
                }
                other => {
                    o += match other {
                        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                        KIND_ARRAY => 12,
                        KIND_FUNC_PROTO => vlen * 8,
                        _ => 0,
                    };
                    Kind::Other
                }
            };
            types.push(Type { name, kind });
        }

        let mut btf = Self {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let name = btf.str_at(btf.types[id].name).to_owned();
            if !name.is_empty() {
                btf.by_name.entry(name).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn resolve_alias(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| &t.kind) {
                Some(Kind::Alias(next)) => id = *next,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `path` (dot-separated member names, e.g. `__sk_common.skc_state`) inside
    /// struct/union `outer`. Members of anonymous structs and unions are found as if they were
    /// direct members, as C does.
    pub fn member_offset(&self, outer: &str, path: &str) -> Option<u32> {
        let ids = self.by_name.get(outer)?;
        let mut type_id = *ids
            .iter()
            .find(|&&id| matches!(self.types[id as usize].kind, Kind::Composite(..)))?;
        let mut total_bits = 0u32;
        for part in path.split('.') {
            let (bits, member_type) = self.find_member(type_id, part)?;
            total_bits += bits;
            type_id = self.resolve_alias(member_type);
        }
        total_bits.is_multiple_of(8).then_some(total_bits / 8)
    }

    /// Finds `name` in composite `type_id`, descending into anonymous members.
    fn find_member(&self, type_id: u32, name: &str) -> Option<(u32, u32)> {
        let Kind::Composite(_, members) = &self.types.get(type_id as usize)?.kind else {
            return None;
        };
        for m in members {
            let m_name = self.str_at(m.name);
            if m_name == name {
                return Some((m.bit_offset, m.type_id));
            }
            if m_name.is_empty() {
                let inner = self.resolve_alias(m.type_id);
                if let Some((bits, t)) = self.find_member(inner, name) {
                    return Some((m.bit_offset + bits, t));
                }
            }
        }
        None
    }

    /// The offset of a variable in a data section (e.g. a per-CPU variable in
    /// `.data..percpu`: per-CPU addresses of two variables differ by as much).
    pub fn section_offset(&self, section: &str, var: &str) -> Option<u32> {
        self.by_name.get(section)?.iter().find_map(|&id| {
            let Kind::DataSec(vars) = &self.types[id as usize].kind else {
                return None;
            };
            vars.iter().find_map(|&(type_id, offset)| {
                let t = self.types.get(type_id as usize)?;
                (self.str_at(t.name) == var).then_some(offset)
            })
        })
    }

    /// Whether the kernel defines tracepoint `name`: each one the kernel image defines has a
    /// `btf_trace_<name>` typedef (its raw tracepoint's prototype) in the image's BTF.
    pub fn declares_tracepoint(&self, name: &str) -> bool {
        self.by_name
            .get(&format!("btf_trace_{name}"))
            .is_some_and(|ids| {
                ids.iter()
                    .any(|&id| matches!(self.types[id as usize].kind, Kind::Alias(_)))
            })
    }

    /// `sizeof(struct name)` (or union).
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .find_map(|&id| match self.types[id as usize].kind {
                Kind::Composite(size, _) => Some(size),
                _ => None,
            })
    }

    /// Value of enumerator `name` in any enum (named or anonymous).
    pub fn enumerator(&self, name: &str) -> Option<i64> {
        self.types.iter().find_map(|t| match &t.kind {
            Kind::Enum(values) => values
                .iter()
                .find(|(n, _)| self.str_at(*n) == name)
                .map(|(_, v)| *v),
            _ => None,
        })
    }

    /// All enumerators of the enum that contains enumerator `member` whose names start with
    /// `prefix`, as value -> name without the prefix. Works for anonymous enums such as the
    /// kernel's TCP states.
    pub fn enum_names_with(&self, member: &str, prefix: &str) -> HashMap<i64, String> {
        let mut out = HashMap::new();
        for t in &self.types {
            let Kind::Enum(values) = &t.kind else {
                continue;
            };
            if !values.iter().any(|(n, _)| self.str_at(*n) == member) {
                continue;
            }
            for (n, v) in values {
                if let Some(stripped) = self.str_at(*n).strip_prefix(prefix) {
                    out.entry(*v).or_insert_with(|| stripped.to_owned());
                }
            }
            break;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { struct { int b; }; long c; }; }` and
    /// `enum { X_ONE = 1, X_TWO = 2 }`.
    fn sample() -> Vec<u8> {
        let strings =
            b"\0outer\0a\0b\0c\0int\0X_ONE\0X_TWO\0v\0.data..percpu\0btf_trace_tp\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| t.extend(w.to_le_bytes()));
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { int b; }
        push(&[0, (KIND_STRUCT << 24) | 1, 4, s("b"), 1, 0]);
        // 3: anonymous union { struct 2; long c (as int); }
        push(&[0, (KIND_UNION << 24) | 2, 8, 0, 2, 0, s("c"), 1, 0]);
        // 4: struct outer { int a; union 3 at bit 64; }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 2,
            16,
            s("a"),
            1,
            0,
            0,
            3,
            64,
        ]);
        // 5: typedef btf_trace_tp -> 4 (a raw tracepoint's typedef, on any type here)
        push(&[s("btf_trace_tp"), KIND_TYPEDEF << 24, 4]);
        // 6: anonymous enum
        push(&[0, (KIND_ENUM << 24) | 2, 4, s("X_ONE"), 1, s("X_TWO"), 2]);
        // 7: int v (global); 8: section .data..percpu { v at 12 }
        push(&[s("v"), KIND_VAR << 24, 1, 1]);
        push(&[s(".data..percpu"), (KIND_DATASEC << 24) | 1, 16, 7, 12, 4]);
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(w.to_le_bytes());
        }
        out.extend(t);
        out.extend(strings);
        out
    }

    #[test]
    fn resolves_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Some(0));
        assert_eq!(btf.member_offset("outer", "b"), Some(8));
        assert_eq!(btf.member_offset("outer", "c"), Some(8));
        assert_eq!(btf.member_offset("outer", "missing"), None);
        assert_eq!(btf.member_offset("nope", "a"), None);
        assert_eq!(btf.struct_size("outer"), Some(16));
        assert_eq!(btf.struct_size("int"), None);
    }

    #[test]
    fn resolves_enumerators() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.enumerator("X_TWO"), Some(2));
        assert_eq!(btf.enumerator("X_THREE"), None);
        let names = btf.enum_names_with("X_ONE", "X_");
        assert_eq!(names.get(&1).map(String::as_str), Some("ONE"));
        assert_eq!(names.get(&2).map(String::as_str), Some("TWO"));
    }

    #[test]
    fn resolves_section_offsets_of_variables() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.section_offset(".data..percpu", "v"), Some(12));
        assert_eq!(btf.section_offset(".data..percpu", "w"), None);
        assert_eq!(btf.section_offset(".bss", "v"), None);
    }

    #[test]
    fn tracepoints_are_declared_by_their_typedef() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(btf.declares_tracepoint("tp"));
        assert!(!btf.declares_tracepoint("outer"));
        assert!(!btf.declares_tracepoint("tcp_sendmsg_locked"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"nope").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
    }
}
