-- A log line's text is followed by a newline in the program's stream unless partial is set
-- (a chunk of a line too long for one message, or a stream's last bytes without a newline),
-- so the stored lines give back the bytes the program wrote.
ALTER TABLE log_lines ADD COLUMN partial INTEGER NOT NULL DEFAULT 0;
