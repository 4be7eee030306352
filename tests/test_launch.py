"""launch/sa2va.launch.py and config/sa2va.yaml against the package.

launch / launch_ros are not installable here, so the launch file runs against small stand-ins of the
launch API that record what it builds; setup.py runs with ``setuptools.setup`` captured. Checked: the
executable is a console script of the package that runs the node, the parameter file is the installed
config/sa2va.yaml and holds exactly the node's parameters at their defaults, and every remapping names one
of the node's topics.
"""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import setuptools
import yaml

from sa2va_ros import node_params
from sa2va_ros.node_params import PARAMETER_NAMES, default_values, validate_parameters

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "sa2va.launch.py"
PARAMS_FILE = REPO / "config" / "sa2va.yaml"


class Recorded:
    """A stand-in launch action or substitution: remembers how it was built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    pass


class DeclareLaunchArgument(Recorded):
    pass


class LifecycleNode(Recorded):
    pass


class LaunchDescription(Recorded):
    pass


@pytest.fixture(scope="module")
def setup_kwargs() -> dict[str, Any]:
    captured: dict[str, Any] = {}
    original = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(REPO)
            runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return captured


@pytest.fixture(scope="module")
def description() -> LaunchDescription:
    modules = {
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
        "ament_index_python.packages": types.ModuleType("ament_index_python.packages"),
    }
    modules["launch"].LaunchDescription = LaunchDescription
    modules["launch.actions"].DeclareLaunchArgument = DeclareLaunchArgument
    modules["launch.substitutions"].LaunchConfiguration = LaunchConfiguration
    modules["launch_ros.actions"].LifecycleNode = LifecycleNode
    shares = {"sa2va_ros": str(REPO)}  # the source tree mirrors share/sa2va_ros (config/, launch/)
    modules["ament_index_python.packages"].get_package_share_directory = shares.__getitem__
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        launch = runpy.run_path(str(LAUNCH_FILE))
        return launch["generate_launch_description"]()
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def the_node(description: LaunchDescription) -> LifecycleNode:
    (node,) = [action for action in description.args[0] if isinstance(action, LifecycleNode)]
    return node


def arguments(description: LaunchDescription) -> dict[str, dict[str, Any]]:
    return {a.args[0]: a.kwargs for a in description.args[0] if isinstance(a, DeclareLaunchArgument)}


def resolve(value: Any, launch_arguments: dict[str, dict[str, Any]]) -> str:
    """A substitution (or list of them) at the launch arguments' defaults."""
    if isinstance(value, list):
        return "".join(resolve(part, launch_arguments) for part in value)
    if isinstance(value, LaunchConfiguration):
        return launch_arguments[value.args[0]]["default_value"]
    return value


def test_the_launched_executable_is_the_packages_node_entry_point(
    description: LaunchDescription, setup_kwargs: dict[str, Any]
) -> None:
    from sa2va_ros.ros import node

    launched = the_node(description).kwargs
    assert launched["package"] == setup_kwargs["name"] == "sa2va_ros"
    assert launched["executable"] == node.EXECUTABLE and launched["name"] == node.NODE_NAME
    scripts = dict(
        (part.strip() for part in entry.split("=")) for entry in setup_kwargs["entry_points"]["console_scripts"]
    )
    assert scripts.get(node.EXECUTABLE) == "sa2va_ros.ros.node:main", "setup.py must install the sa2va_node script"
    assert callable(node.main)


def test_the_parameter_file_is_the_installed_config(
    description: LaunchDescription, setup_kwargs: dict[str, Any]
) -> None:
    launch_arguments = arguments(description)
    (params,) = the_node(description).kwargs["parameters"]
    path = Path(resolve(params, launch_arguments))
    assert path == PARAMS_FILE and path.is_file()
    installed = {destination: files for destination, files in setup_kwargs["data_files"]}
    assert "config/sa2va.yaml" in installed["share/sa2va_ros/config"]
    assert "launch/sa2va.launch.py" in installed["share/sa2va_ros/launch"]


def test_remappings_name_the_nodes_topics(description: LaunchDescription) -> None:
    from sa2va_ros.ros import node

    launch_arguments = arguments(description)
    remappings = {source: resolve(target, launch_arguments) for source, target in the_node(description).kwargs[
        "remappings"
    ]}
    assert set(remappings) <= set(node.TOPICS)
    image = launch_arguments["image"]["default_value"]
    assert remappings["image"] == image and remappings["image/compressed"] == image + "/compressed"
    assert remappings["command"] == "command"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_the_parameter_file_holds_every_parameter_at_its_default() -> None:
    document = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(document) == ["/**"] and list(document["/**"]) == ["ros__parameters"]
    values = flatten(document["/**"]["ros__parameters"])
    assert sorted(values) == sorted(PARAMETER_NAMES)
    assert values == default_values()
    assert validate_parameters(values) == validate_parameters({})
    assert set(node_params.NodeParams.__dataclass_fields__) == {spec.field for spec in node_params.PARAMETERS}
