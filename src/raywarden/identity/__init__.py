"""Identity store: principals, their groups, issued certificate serials and revocations (SQLite, WAL)."""
