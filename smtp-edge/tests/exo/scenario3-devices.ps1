# Exchange commands for smtp-edge at relay.contoso.com.
# Each parameter names the setting it comes from; check every value
# marked CHECK before you run a command.

# ===== Exchange Online PowerShell (Connect-ExchangeOnline) =====

# This host delivers to Exchange Online: [[outbound_connectors]] `to-microsoft-365`.
# CHECK: `to-microsoft-365` has no client_certificate, so Exchange Online can only know this host by address: set SenderIPAddresses to its public address (Microsoft recommends certificate-based connectors: shared addresses let other tenants in).
$p = @{
    Name                         = 'smtp-edge relay.contoso.com (to-microsoft-365)'    # [smtp] hostname, [[outbound_connectors]] name
    ConnectorType                = 'OnPremises'    # mail from your organisation's own server
    SenderDomains                = @('*')    # any sender of your organisation
    RequireTls                   = $true    # tls = "domain-validation"
    SenderIPAddresses            = @('<this host''s public address>')    # not in the configuration: CHECK
    RestrictDomainsToIPAddresses = $true    # address-based: only mail from it
}
New-InboundConnector @p

# ===== Exchange Management Shell on the on-premises Exchange server =====

# No outbound connector delivers to an on-premises server (smart hosts other than Exchange Online): nothing to set up there.
