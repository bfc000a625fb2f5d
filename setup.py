import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# one version source: ramstrans/__init__.py
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "ramstrans" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="ramstrans",
    version=VERSION,
    description="RAMS-Trans (ACM MM 2021) with TransMix for fine-grained image recognition on timm ViTs",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ramstrans", "ramstrans.*"]),
    include_package_data=True,
    package_data={
        "ramstrans": [
            "weights/*.safetensors",
            "weights/*.json",
            "configs/*.yaml",
            "configs/README.md",
            "inference/*.html",
        ]
    },
    install_requires=[
        "torch>=2.1",
        "timm>=1.0",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "albumentations",
        "pandas",
        "pyyaml",
        "tqdm",
        "safetensors",
        "matplotlib",
        "huggingface_hub",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "hypothesis",
            "selenium",
            "ruff",
            "mypy",
            "tensorboard",
            "onnx",
            "onnxscript",
            "onnxruntime",
        ],
        "tensorboard": ["tensorboard"],
        "deploy": ["onnx", "onnxscript", "onnxruntime"],
        "docs": ["mkdocs-material"],
    },
    entry_points={"console_scripts": ["ramstrans = ramstrans.cli:main"]},
)
