# Exchange commands for smtp-edge at edge.contoso.com.
# Each parameter names the setting it comes from; check every value
# marked CHECK before you run a command.

# ===== Exchange Online PowerShell (Connect-ExchangeOnline) =====

# Exchange Online delivers to this host: [[inbound_connectors]] `from-exchange-online` takes it.
# CHECK: [smtp.tls] certificate could not be read here: it must name edge.contoso.com.
$p = @{
    Name                     = 'smtp-edge edge.contoso.com (from-exchange-online)'    # [smtp] hostname, [[inbound_connectors]] name
    ConnectorType            = 'OnPremises'    # your organisation's own server (the edge in front of it)
    RecipientDomains         = @('contoso.com', '*.contoso.com')    # [[inbound_connectors]] `from-exchange-online` recipient_domains (accepted = [smtp] accepted_domains)
    SmartHosts               = @('edge.contoso.com')    # [smtp] hostname
    UseMXRecord              = $false    # deliver to the smart host, not MX
    TlsSettings              = 'DomainValidation'    # require_tls = true with [smtp.tls]: Exchange Online checks our certificate
    TlsDomain                = 'edge.contoso.com'    # [smtp] hostname, named by [smtp.tls] certificate
    CloudServicesMailEnabled = $true    # trusted_headers = true with tenants (0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0): keep the internal headers
}
New-OutboundConnector @p

# [[inbound_connectors]] `from-exchange-online` tenants: only tenant 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0 may send through it (tenant_policy = "enforce", tenant_proof = "stamp"): Exchange Online stamps its id as X-MS-Exchange-CrossTenant-Id; mail EOP relays from the internet keeps its author's DKIM signature (none of yours is needed).

# This host delivers to Exchange Online: [[outbound_connectors]] `to-microsoft-365`.
# CHECK: /nonexistent/edge.contoso.com.pem could not be read here: put a name from its subject or SAN (an accepted domain) in TlsSenderCertificateName.
$p = @{
    Name                         = 'smtp-edge edge.contoso.com (to-microsoft-365)'    # [smtp] hostname, [[outbound_connectors]] name
    ConnectorType                = 'OnPremises'    # mail from your organisation's own server
    SenderDomains                = @('*')    # any sender of your organisation
    RequireTls                   = $true    # tls = "domain-validation"
    TlsSenderCertificateName     = 'edge.contoso.com'    # `to-microsoft-365` client_certificate (its name assumed: ehlo_name or [smtp] hostname)
    RestrictDomainsToCertificate = $true    # certificate-based: only mail presenting it
}
New-InboundConnector @p

# ===== Exchange Management Shell on the on-premises Exchange server =====

# This host delivers mail for contoso.com, *.contoso.com to exchange.contoso.com: [[outbound_connectors]] `to-on-prem`.
$p = @{
    Name             = 'From smtp-edge edge.contoso.com (to-on-prem)'    # [smtp] hostname, [[outbound_connectors]] name
    Server           = 'exchange.contoso.com'    # `to-on-prem` smart_hosts (the first)
    TransportRole    = 'FrontendTransport'    # port 25 on the Front End Transport service
    Usage            = 'Custom'    # its own connector for this host
    Bindings         = @('0.0.0.0:25')    # `to-on-prem` smart_hosts port
    RemoteIPRanges   = @('203.0.113.25')    # [smtp] listen addresses (where this host connects from: CHECK)
    Fqdn             = 'exchange.contoso.com'    # `to-on-prem` tls_domain or smart host: the name its certificate must have
    PermissionGroups = 'AnonymousUsers'    # mail relayed from the internet and Exchange Online
    AuthMechanism    = 'Tls'    # `to-on-prem` tls = "domain-validation"
    RequireTLS       = $true    # `to-on-prem` tls = "domain-validation"
}
New-ReceiveConnector @p

# If 198.51.100.25/32 is the on-premises Exchange: its mail to the internet and Exchange Online goes through this host ([[inbound_connectors]] `from-on-prem`). For devices and apps there is nothing to set up in Exchange.
$p = @{
    Name              = 'To smtp-edge edge.contoso.com (from-on-prem)'    # [smtp] hostname, [[inbound_connectors]] name
    Usage             = 'Custom'    # its own connector for this host
    AddressSpaces     = @('SMTP:*;1')    # relay = true (true: everything; false: recipient_domains)
    DNSRoutingEnabled = $false    # deliver to the smart host
    SmartHosts        = @('edge.contoso.com')    # [smtp] hostname
    Port              = 25    # [smtp] listen port
    RequireTLS        = $true    # require_tls = true
    TlsAuthLevel      = 'DomainValidation'    # [smtp.tls]: this host's certificate
    TlsDomain         = 'edge.contoso.com'    # [smtp] hostname
}
New-SendConnector @p

