using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Tests;

/// <summary>How every Temporal client and worker of a process connects: plain only when nothing asks for
/// more; TLS with the server's CA and name, a client certificate (mTLS) or an API key from settings;
/// files that are missing or half a pair refused on start, naming the setting.</summary>
public sealed class TemporalOptionsTests : IDisposable
{
    private readonly DirectoryInfo folder = Directory.CreateTempSubdirectory("semigrate-temporal-tls-");

    public void Dispose() => folder.Delete(recursive: true);

    private string File(string name, string text)
    {
        var path = Path.Combine(folder.FullName, name);
        System.IO.File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Without_tls_settings_the_connection_is_plain_and_with_them_it_carries_the_ca_the_client_pair_and_the_api_key()
    {
        var plain = new TemporalOptions { Address = "temporal.example:7233", Namespace = "fleet" }.ConnectOptions();
        Assert.Equal(("temporal.example:7233", "fleet"), (plain.TargetHost, plain.Namespace));
        Assert.Null(plain.Tls);
        Assert.Null(plain.ApiKey);

        var mtls = new TemporalOptions
        {
            Address = "temporal.example:7233",
            ServerCaFile = File("ca.pem", "CA"),
            ServerName = "frontend.internal",
            ClientCertFile = File("client.pem", "CERT"),
            ClientKeyFile = File("client.key", "KEY"),
        }.ConnectOptions();
        Assert.NotNull(mtls.Tls);
        Assert.Equal("CA"u8.ToArray(), mtls.Tls.ServerRootCACert);
        Assert.Equal("frontend.internal", mtls.Tls.Domain);
        Assert.Equal("CERT"u8.ToArray(), mtls.Tls.ClientCert);
        Assert.Equal("KEY"u8.ToArray(), mtls.Tls.ClientPrivateKey);

        var apiKey = new TemporalOptions { Address = "cloud.example:7233", ApiKey = "k-123" }.ConnectOptions();
        Assert.Equal("k-123", apiKey.ApiKey);
        Assert.NotNull(apiKey.Tls); // a bearer token never goes in the clear
        Assert.Null(apiKey.Tls.ClientCert);
    }

    [Theory]
    [InlineData("ClientCertFile", "Temporal:ClientCertFile and Temporal:ClientKeyFile go together")]
    [InlineData("ServerCaFile", "must name files that exist")]
    public void A_half_pair_or_a_missing_file_is_refused_on_start_naming_the_setting(string setting, string expected)
    {
        var builder = SemigrateHost.CreateBuilder();
        builder.Configuration["Temporal:Address"] = "temporal.example:7233";
        builder.Configuration[$"Temporal:{setting}"] = setting == "ServerCaFile" ? Path.Combine(folder.FullName, "absent.pem") : File("c.pem", "CERT");
        using var host = builder.Build();

        var e = Assert.Throws<OptionsValidationException>(() => host.Services.GetRequiredService<IOptions<TemporalOptions>>().Value);
        Assert.Contains(expected, string.Join("; ", e.Failures), StringComparison.Ordinal);
    }
}
