from setuptools import find_packages, setup

setup(
    name="fashion-assets",
    version="0.1.0",
    description="A fashion catalog as Dagster assets: SQL-selected image sets in S3, augmentation, "
    "a Keras classifier and prediction tables.",
    packages=find_packages(exclude=["fashion_assets_tests", "fashion_assets_tests.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=[
        "dagster>=1.13,<1.14",
        "dagster-webserver>=1.13,<1.14",
        "dagster-aws>=0.29,<0.30",
        "dagster-postgres>=0.29,<0.30",
        "boto3>=1.35,<2",
        "SQLAlchemy>=2.0,<2.2",
        "psycopg2-binary>=2.9,<3",
        "pandas>=2.2,<4",
        "pyarrow>=16",
        "pillow>=11,<14",
        "sqlglot>=27,<31",
        "dagster-k8s>=0.29,<0.30",
        "albumentations>=2.0,<2.1",
        "ImageHash>=4.3,<5",  # perceptual hashes: near-duplicate groups of product photos
        "numpy>=1.26",
        # The online gateway (fashion-assets serve): Starlette on uvicorn, uploads parsed by
        # python-multipart, URLs fetched with httpx, TF Serving reached over gRPC.
        "starlette>=0.40,<2",
        "uvicorn>=0.30,<1",
        "python-multipart>=0.0.18,<0.1",
        "httpx>=0.27,<1",
        "grpcio>=1.60,<2",
        # TensorFlow comes from an extra: `cpu` (tensorflow-cpu, what make installs) or `gpu`
        # (tensorflow, CUDA build; the GPU image has it from its base).
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.19,<2.22"],
        "gpu": ["tensorflow>=2.19,<2.22"],
        "docker": ["dagster-docker>=0.29,<0.30"],
        # TF Serving's request/response messages and PredictionService stub, for the gateway's
        # tfserving backend. The package declares a dependency on the full `tensorflow`
        # distribution, which with tensorflow-cpu would install a second TensorFlow over the
        # first. So: this extra only where `tensorflow` is what is installed (`.[gpu,serving]`);
        # with tensorflow-cpu (make, docker/Dockerfile) it is installed alone, pinned:
        #   pip install --no-deps -c constraints.txt tensorflow-serving-api
        # Its modules import `tensorflow.core.framework`, which tensorflow-cpu provides; `pip
        # check` then reports only that `tensorflow` (the distribution name) is missing, which
        # fashion_assets_tests/test_serving_deploy.py checks is the one complaint.
        "serving": ["tensorflow-serving-api>=2.19,<2.22"],
        "dev": [
            # `dg check defs`, `dg list defs`, `dg launch`, `dg dev` (README, "The dg CLI")
            "dagster-dg-cli>=1.13,<1.14",
            "pytest>=8,<10",
            "moto[server]>=5.1,<6",
            "kubernetes-validate>=1.30",
            "jsonschema>=4.20",
            "PyYAML>=6",
            "dagster-docker>=0.29,<0.30",
            "playwright>=1.50,<2",
            # examples/walkthrough.ipynb, executed top to bottom by the tests on a real kernel
            "nbclient>=0.10,<0.12",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
        ],
    },
    entry_points={"console_scripts": ["fashion-assets=fashion_assets.cli:main"]},
)
