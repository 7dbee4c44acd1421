# Exchange commands for smtp-edge at edge.contoso.com.
# Each parameter names the setting it comes from; check every value
# marked CHECK before you run a command.

# [smtp] enabled = false: this host only passes port 25 on to your Exchange server
# (the gate), as Microsoft supports for hybrid mail flow. The Hybrid Configuration
# Wizard makes the connectors between Exchange Online and that server; nothing here
# changes them. Check that the gate allows the addresses they use:
Get-OutboundConnector | Format-Table Name, SmartHosts, TlsDomain
Get-InboundConnector | Format-Table Name, SenderIPAddresses, TlsSenderCertificateName
