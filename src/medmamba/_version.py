from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("medmamba")
    except PackageNotFoundError:  # run from a source tree without installing
        return "0+unknown"
