"""Errors a user can cause and fix: each prints as one line naming the file, flag or binding."""


class UserError(ValueError):
  """A mistake in the user's input (path, name, binding, data). Its message is one line."""
