"""Errors a user can cause and fix: each prints as one line naming the file, flag or binding."""


class UserError(ValueError):
  """A mistake in the user's input (path, name, binding, data). Its message is one line."""


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is left as it was."""
