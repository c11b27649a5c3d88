//! The values statements take and rows give back, on either database.
//!
//! Owns converting between Rust values and each driver's: parameters become a
//! [`Value`] that both rusqlite and postgres can bind (for PostgreSQL, an integer binds
//! as whatever integer or boolean type the server inferred for its placeholder), and
//! columns come back through [`Value`] into the type asked for. Does not own SQL.

use postgres::types::{IsNull, ToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::DbError;

/// One parameter or column value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// Any integer or boolean column.
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
}

/// What can be bound to a placeholder.
pub trait Param: Sync {
    /// As a value.
    fn value(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_param!(i64, i32, i16, u32, u16, u8, usize);

/// Bit for bit, as the store has always kept `u64`s (epochs use all 64 bits).
impl Param for u64 {
    fn value(&self) -> Value<'_> {
        Value::Int(*self as i64)
    }
}

impl Param for bool {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}

impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Bytes(self)
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}

impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, |v| v.value())
    }
}

impl Param for Value<'_> {
    fn value(&self) -> Value<'_> {
        *self
    }
}

/// Parameters as SQLite binds them.
pub(super) struct Sqlite<'p>(pub(super) &'p dyn Param);

impl rusqlite::ToSql for Sqlite<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0.value() {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(v),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

/// Parameters as PostgreSQL binds them: in the type the server inferred.
#[derive(Debug)]
pub(super) struct Postgres<'p>(pub(super) Value<'p>);

impl ToSql for Postgres<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::BOOL => (v != 0).to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A column read from a PostgreSQL row, whatever its type.
pub(super) fn pg_column(row: &postgres::Row, i: usize) -> Result<Value<'_>, DbError> {
    let ty = row
        .columns()
        .get(i)
        .ok_or(DbError::Column(i, "a column"))?
        .type_()
        .clone();
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
    Ok(match ty {
        Type::BOOL => int(row.try_get::<_, Option<bool>>(i)?.map(i64::from)),
        Type::INT2 => int(row.try_get::<_, Option<i16>>(i)?.map(i64::from)),
        Type::INT4 => int(row.try_get::<_, Option<i32>>(i)?.map(i64::from)),
        Type::INT8 => int(row.try_get::<_, Option<i64>>(i)?),
        Type::BYTEA => row
            .try_get::<_, Option<&[u8]>>(i)?
            .map_or(Value::Null, Value::Bytes),
        _ => row
            .try_get::<_, Option<&str>>(i)?
            .map_or(Value::Null, Value::Text),
    })
}

/// A column read from a SQLite row.
pub(super) fn sqlite_column<'r>(
    row: &'r rusqlite::Row<'_>,
    i: usize,
) -> Result<Value<'r>, DbError> {
    Ok(match row.get_ref(i)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(v) => Value::Int(v),
        ValueRef::Real(v) => Value::Int(v as i64),
        ValueRef::Text(t) => {
            Value::Text(std::str::from_utf8(t).map_err(|_| DbError::Column(i, "UTF-8 text"))?)
        }
        ValueRef::Blob(b) => Value::Bytes(b),
    })
}

/// What a column can be read as.
pub trait FromColumn: Sized {
    /// Convert column `i`'s value.
    fn from_column(v: Value<'_>, i: usize) -> Result<Self, DbError>;
}

impl FromColumn for i64 {
    fn from_column(v: Value<'_>, i: usize) -> Result<Self, DbError> {
        match v {
            Value::Int(v) => Ok(v),
            _ => Err(DbError::Column(i, "an integer")),
        }
    }
}

/// Bit for bit, as written by [`Param`] for `u64`.
impl FromColumn for u64 {
    fn from_column(v: Value<'_>, i: usize) -> Result<Self, DbError> {
        i64::from_column(v, i).map(|v| v as u64)
    }
}

impl FromColumn for bool {
    fn from_column(v: Value<'_>, i: usize) -> Result<Self, DbError> {
        i64::from_column(v, i).map(|v| v != 0)
    }
}

impl FromColumn for String {
    fn from_column(v: Value<'_>, i: usize) -> Result<Self, DbError> {
        match v {
            Value::Text(s) => Ok(s.to_owned()),
            _ => Err(DbError::Column(i, "text")),
        }
    }
}

impl FromColumn for Vec<u8> {
    fn from_column(v: Value<'_>, i: usize) -> Result<Self, DbError> {
        match v {
            Value::Bytes(b) => Ok(b.to_vec()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            _ => Err(DbError::Column(i, "bytes")),
        }
    }
}

impl<T: FromColumn> FromColumn for Option<T> {
    fn from_column(v: Value<'_>, i: usize) -> Result<Self, DbError> {
        match v {
            Value::Null => Ok(None),
            v => T::from_column(v, i).map(Some),
        }
    }
}
