-- Smart lockout rows are keyed on the account found, never on a typed name (issue 8
-- findings 2 and 3): a synced user's row on their stored username, an admin's on
-- 'admin <admin id>' (sts.lockout.admin_key). Admin rows keyed by name move to the id;
-- rows of no account (typed names, accounts since deleted) go: the table holds only
-- accounts that exist.
UPDATE lockouts l SET username = 'admin ' || a.id::text
FROM admins a
WHERE l.tenant_id = a.tenant_id AND l.username = 'admin ' || a.username;

DELETE FROM lockouts l
WHERE NOT EXISTS (
        SELECT 1 FROM users u WHERE u.tenant_id = l.tenant_id AND u.username = l.username)
  AND NOT EXISTS (
        SELECT 1 FROM admins a
        WHERE a.tenant_id = l.tenant_id AND l.username = 'admin ' || a.id::text);
