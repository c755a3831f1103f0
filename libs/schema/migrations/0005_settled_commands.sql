-- A command's outcome is settled once, here. The attempt that runs it records its reply in the
-- same transaction as its effects. A caller that gives up waiting (and answers 503 "nothing was
-- changed") first marks its attempt abandoned in the same row: whichever commits first wins, and
-- an abandoned attempt that reaches its commit later finds the mark and rolls back. A later
-- attempt of the same command id (a keyed retry) is not in `abandoned` and may still record.
-- A row with no reply holds only abandoned attempts: the command has no outcome yet.
ALTER TABLE command_results ALTER COLUMN reply DROP NOT NULL;
ALTER TABLE command_results ADD COLUMN attempt text;
ALTER TABLE command_results ADD COLUMN abandoned text[] NOT NULL DEFAULT '{}';
