"""User-facing errors. The CLI turns any :class:`DAOError` into one line on stderr and exit code 2."""


class DAOError(Exception):
    """A problem with the user's input (formula, file, checkpoint, option), not a bug in DAO."""


class FormulaError(DAOError, ValueError):
    """Unparseable formula, unknown element or unsupported atom count."""


class StructureReadError(DAOError, ValueError):
    """A structure file that cannot be read."""


class CheckpointError(DAOError):
    """A missing, corrupt or incompatible model checkpoint."""


class ConfigError(DAOError, ValueError):
    """A configuration value or section that DAO does not know or cannot use."""
