"""Loaded at interpreter start by tinygrad_rocket_autoload.pth: makes `DEV=ROCKET` work without `import tinygrad_rocket`.

It only installs an import finder for the module name tinygrad asks for (tinygrad.runtime.ops_rocket); nothing else is
imported until tinygrad opens the ROCKET device, so interpreter start-up stays cheap.
"""
import sys, importlib.abc, importlib.util

class _RocketModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  NAME = "tinygrad.runtime.ops_rocket"
  def find_spec(self, fullname, path, target=None):
    return importlib.util.spec_from_loader(fullname, self) if fullname == self.NAME else None
  def create_module(self, spec): return None
  def exec_module(self, module):
    from tinygrad_rocket.device import RocketDevice  # importing the package also checks the tinygrad version
    module.RocketDevice = RocketDevice

if not any(isinstance(f, _RocketModuleFinder) for f in sys.meta_path): sys.meta_path.append(_RocketModuleFinder())
