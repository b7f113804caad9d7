using Temporalio.Client;

namespace SEmigrate.Workers.Settings;

/// <summary>A Temporal server; when no address is set, migrations run on the embedded engine. Whoever reaches
/// the frontend can signal, cancel or poll any workflow and task queue, so a real deployment speaks TLS
/// (<see cref="Tls"/>, or any certificate or key set), with a client certificate (mTLS) or an API key.</summary>
public sealed record TemporalOptions
{
    public const string Section = "Temporal";

    /// <summary>host:port of the Temporal frontend, or empty.</summary>
    public string? Address { get; init; }

    public string Namespace { get; init; } = "default";

    /// <summary>Speak TLS to the frontend (with the system's trust store unless <see cref="ServerCaFile"/>).</summary>
    public bool Tls { get; init; }

    /// <summary>PEM file of the CA that signed the frontend's certificate.</summary>
    public string? ServerCaFile { get; init; }

    /// <summary>The name the frontend's certificate must carry, when it is not the address's host.</summary>
    public string? ServerName { get; init; }

    /// <summary>PEM files of this client's certificate and private key (mTLS); both or neither.</summary>
    public string? ClientCertFile { get; init; }

    public string? ClientKeyFile { get; init; }

    /// <summary>An API key (Temporal Cloud, or a server with an authorizer), sent as a bearer token; implies TLS.</summary>
    public string? ApiKey { get; init; }

    public bool IsConfigured => !string.IsNullOrWhiteSpace(Address);

    /// <summary>Whether the connection is TLS: asked for, or implied by a certificate or an API key.</summary>
    public bool UsesTls => Tls || !string.IsNullOrEmpty(ServerCaFile) || !string.IsNullOrEmpty(ClientCertFile) || !string.IsNullOrEmpty(ApiKey);

    /// <summary>How every client and worker of this process connects (files read now: a missing one fails here, naming it).</summary>
    public TemporalClientConnectOptions ConnectOptions() => new(Address!)
    {
        Namespace = Namespace,
        ApiKey = string.IsNullOrEmpty(ApiKey) ? null : ApiKey,
        Tls = !UsesTls ? null : new TlsOptions
        {
            ServerRootCACert = Read(ServerCaFile),
            Domain = string.IsNullOrEmpty(ServerName) ? null : ServerName,
            ClientCert = Read(ClientCertFile),
            ClientPrivateKey = Read(ClientKeyFile),
        },
    };

    private static byte[]? Read(string? file) => string.IsNullOrEmpty(file) ? null
        : File.Exists(file) ? File.ReadAllBytes(file) : throw new FileNotFoundException($"Temporal: {file} does not exist", file);
}
