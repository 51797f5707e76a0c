"""``python -m retina_deploy.cli`` (as ``torchrun -m retina_deploy.cli train ...`` needs): the ``retina-deploy``
command.
"""

from retina_deploy.cli.main import main

raise SystemExit(main())
