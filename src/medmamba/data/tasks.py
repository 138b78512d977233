"""Task names as MedMNIST spells them ("binary-class", "multi-class", "multi-label, binary-class", ...)."""

MULTI_LABEL = "multi-label"


def is_multi_label(task: str) -> bool:
    """"multi-label, binary-class" is multi-label; every other task is one class per image."""
    return str(task).startswith(MULTI_LABEL)
