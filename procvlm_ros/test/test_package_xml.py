"""
package.xml declares what the installed package imports (read with ``ast``, no ROS needed).

Two rules, so that ``rosdep install`` on a robot gives a node that starts:

- every ROS package imported anywhere in the installed package or its launch files is an
  ``exec_depend``;
- every third-party Python library imported at module level by a module the nodes and launch
  files load maps to a rosdep key that is an ``exec_depend``. Libraries imported lazily inside
  functions must be classified too: either a rosdep key or a pip extra (``EXTRAS``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
import functools
from pathlib import Path
import sys
import xml.etree.ElementTree as ET

import pytest

PKG = Path(__file__).resolve().parents[1]
FIRST_PARTY = 'procvlm_ros'

# Python import name -> rosdep key (ros/rosdistro rosdep/python.yaml).
ROSDEP_KEYS = {'numpy': 'python3-numpy', 'PIL': 'python3-pil', 'yaml': 'python3-yaml'}

# Heavy or optional libraries: never run dependencies. The backends import them inside
# load()/functions (ruff's banned-module-level-imports enforces it) and setup.py's
# extras_require installs them from pip (transformers, onnx, media); TensorRT comes with
# JetPack/NVIDIA. `av` is imported at module level by media/video.py, which only the
# video_camera tool node loads: that node needs the `media` extra (no rosdep key used).
EXTRAS = frozenset({
    'torch', 'transformers', 'huggingface_hub', 'safetensors', 'tokenizers', 'peft',
    'onnx', 'onnxruntime', 'tensorrt', 'av', 'rosbags', 'matplotlib', 'tqdm',
})

# ROS packages whose name does not follow the *_msgs / *_srvs / *_interfaces pattern.
ROS_PACKAGES = frozenset({
    'rclpy', 'launch', 'launch_ros', 'launch_testing', 'launch_testing_ros',
    'ament_index_python', 'rosidl_runtime_py', 'rosbag2_py', 'tf2_ros', 'cv_bridge',
    'message_filters', 'image_transport', 'rcl_interfaces', 'builtin_interfaces',
})


def is_ros_package(name: str) -> bool:
    return name in ROS_PACKAGES or name.endswith(('_msgs', '_srvs', '_interfaces'))


@dataclass
class ModuleImports:
    """Imports of one source file: module level (run on import) and inside functions."""

    top: set[str] = field(default_factory=set)
    lazy: set[str] = field(default_factory=set)
    first_party: set[str] = field(default_factory=set)  # module-level, absolute dotted names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
        isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _resolve(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ''
    base = package.split('.')[:len(package.split('.')) - level + 1]
    return '.'.join(base + ([module] if module else []))


@functools.cache
def read_imports(path: Path, module_name: str) -> ModuleImports:
    is_pkg = path.name == '__init__.py'
    package = module_name if is_pkg else module_name.rpartition('.')[0]
    out = ModuleImports()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only, never imported at run time
            lazy = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child.module, child.level, package)
                # `from pkg import sub` may import a submodule: keep both candidates.
                names = [base] + [f'{base}.{a.name}' for a in child.names if a.name != '*']
            for name in names:
                top = name.split('.')[0]
                if top == FIRST_PARTY:
                    if not lazy:
                        out.first_party.add(name)
                elif top and top not in sys.stdlib_module_names and top != '__future__':
                    (out.lazy if lazy else out.top).add(top)
            visit(child, lazy)

    visit(ast.parse(path.read_text(encoding='utf-8'), str(path)), False)
    return out


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    mods = {}
    for path in sorted((PKG / FIRST_PARTY).rglob('*.py')):
        parts = list(path.relative_to(PKG).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        mods['.'.join(parts)] = path
    return mods


def launch_files() -> list[Path]:
    return sorted((PKG / 'launch').glob('*.py'))


def node_runtime_modules(mods: dict[str, Path]) -> set[str]:
    """Modules loaded by the nodes: the ros/ entry points and core/ (backends load by name)."""
    roots = [m for m in mods if m.startswith((f'{FIRST_PARTY}.ros', f'{FIRST_PARTY}.core'))]
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in mods:
            continue
        seen.add(name)
        parts = name.split('.')
        todo += ['.'.join(parts[:i]) for i in range(1, len(parts))]  # parent __init__s run
        todo += read_imports(mods[name], name).first_party
    return seen


def exec_depends(xml_text: str) -> set[str]:
    root = ET.fromstring(xml_text)
    return {e.text.strip() for tag in ('exec_depend', 'depend') for e in root.iter(tag)
            if e.text}


def installed_sources() -> list[tuple[str, Path, bool]]:
    """(module name, file, loaded by a node or launch file) for everything installed."""
    mods = package_modules()
    node_mods = node_runtime_modules(mods)
    sources = [(name, path, name in node_mods) for name, path in mods.items()]
    return sources + [(f'launch/{p.name}', p, True) for p in launch_files()]


def required_depends(sources: list[tuple[str, Path, bool]] | None = None) -> dict[str, str]:
    """rosdep key -> one place that needs it; raises if an import cannot be classified."""
    needed: dict[str, str] = {}
    unclassified = []
    for name, path, on_node_path in sources if sources is not None else installed_sources():
        imports = read_imports(path, name)
        for lib in sorted(imports.top | imports.lazy):
            if is_ros_package(lib):
                needed.setdefault(lib, name)
        if not on_node_path:
            continue  # offline tools: their libraries are setup.py extras
        for lib in sorted(imports.top):
            if is_ros_package(lib):
                continue
            if lib in ROSDEP_KEYS:
                needed.setdefault(ROSDEP_KEYS[lib], name)
            elif lib not in EXTRAS or name.startswith(f'{FIRST_PARTY}.core'):
                unclassified.append(f'{name} imports {lib} at module level')
        unclassified += [f'{name} imports {lib} lazily: add it to ROSDEP_KEYS or EXTRAS'
                         for lib in sorted(imports.lazy)
                         if not is_ros_package(lib) and lib not in ROSDEP_KEYS
                         and lib not in EXTRAS]
    assert not unclassified, '\n'.join(unclassified)
    return needed


def missing_depends(xml_text: str) -> list[str]:
    declared = exec_depends(xml_text)
    return sorted(f'{key} (imported by {where})' for key, where in required_depends().items()
                  if key not in declared)


def test_every_import_of_the_nodes_is_a_run_dependency():
    missing = missing_depends((PKG / 'package.xml').read_text(encoding='utf-8'))
    assert not missing, 'add <exec_depend> to package.xml for: ' + ', '.join(missing)


def test_the_scan_sees_the_imports_it_must_see():
    needed = required_depends()
    # Imported by ros/ modules, core/ and the launch file respectively.
    for key in ('rclpy', 'sensor_msgs', 'procvlm_msgs', 'python3-numpy', 'python3-pil',
                'launch', 'launch_ros', 'ament_index_python'):
        assert key in needed, key
    assert not {'torch', 'transformers', 'onnxruntime', 'tensorrt'} & set(needed)


def test_removing_any_dependency_is_caught():
    text = (PKG / 'package.xml').read_text(encoding='utf-8')
    required = sorted(required_depends())
    assert len(required) >= 10
    for key in required:
        line = f'<exec_depend>{key}</exec_depend>'
        assert line in text, f'{key} is not declared as <exec_depend>'
        assert [m.split(' ')[0] for m in missing_depends(text.replace(line, ''))] == [key]


def test_unclassified_libraries_are_reported(tmp_path):
    src = tmp_path / 'mod.py'
    src.write_text('import numpy\nimport scipy.signal\nfrom std_srvs.srv import Trigger\n\n'
                   'def f():\n    import torch\n    import ray\n', encoding='utf-8')
    imports = read_imports(src, f'{FIRST_PARTY}.ros.mod')
    assert imports.top == {'numpy', 'scipy', 'std_srvs'} and imports.lazy == {'torch', 'ray'}
    with pytest.raises(AssertionError) as err:
        required_depends([(f'{FIRST_PARTY}.ros.mod', src, True)])
    assert 'scipy at module level' in str(err.value) and 'ray lazily' in str(err.value)
    assert 'torch' not in str(err.value) and 'numpy' not in str(err.value)
    # Off the node path only ROS packages count.
    assert required_depends([(f'{FIRST_PARTY}.export.mod', src, False)]) == {
        'std_srvs': f'{FIRST_PARTY}.export.mod'}
