"""Naming rule for pytest temp dirs: conftest frees each module's dirs when the module ends,
except those whose name starts with SESSION_DIR_PREFIX (shared by several modules)."""

SESSION_DIR_PREFIX = "session-"
