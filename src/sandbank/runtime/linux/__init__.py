"""The Linux runtime driver: runc + overlayfs + ext4 disk images + cgroups + namespaces.

``driver.LinuxRuntime`` is the entry point; the other modules are its parts.
"""
