"""The Nexus guest agent and its wire protocol.

Keep this file free of imports: the guest image copies ``nexus/guest/*.py`` and runs
``python3 -m nexus.guest.agent`` on Debian's ``python3-minimal``, so nothing in this
package may import outside the standard library subset that package ships (the host-only
``client`` module is the one exception, and the agent never imports it).
"""
