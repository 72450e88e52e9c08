// The replicated DDL log: the source's event trigger writes each schema change
// here, the table travels in the stream like any other, and the apply side
// runs the DDL at its position. One definition serves both sides.

export const CREATE_DDL_LOG_TABLE = `CREATE TABLE IF NOT EXISTS lifeboat.ddl_log (
   id bigserial PRIMARY KEY,
   at timestamptz NOT NULL DEFAULT now(),
   xid bigint,
   command_tag text,
   object_identity text,
   ddl text NOT NULL,
   search_path text,
   role text
 )`;
