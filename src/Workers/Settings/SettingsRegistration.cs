using System.Text.RegularExpressions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Npgsql;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Settings;

/// <summary>Binds and validates every options record; a bad value fails with one line naming the key.</summary>
public static partial class SettingsRegistration
{
    public static IHostApplicationBuilder AddSettings(this IHostApplicationBuilder builder)
    {
        builder.Services.AddOptions<PostgresOptions>().BindConfiguration(PostgresOptions.Section)
            .Validate(o => IsPostgresConnectionString(o.ConnectionString),
                "Postgres:ConnectionString is missing or is not a PostgreSQL connection string (Host=...;Port=...;Username=...)")
            .Validate(o => SqlIdentifier().IsMatch(o.Schema),
                "Postgres:Schema must be a lower-case SQL identifier (letters, digits, _)")
            .ValidateOnStart();
        builder.Services.AddOptions<RabbitMqOptions>().BindConfiguration(RabbitMqOptions.Section)
            .Validate(o => o.Uri is { IsAbsoluteUri: true, Scheme: "amqp" or "amqps" },
                "RabbitMq:Uri is missing or is not an amqp:// or amqps:// URI")
            .ValidateOnStart();
        builder.Services.AddOptions<AuditOptions>().BindConfiguration(AuditOptions.Section)
            .Validate(o => !string.IsNullOrWhiteSpace(o.Queue) && o.Queue.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'),
                "Audit:Queue must name a queue: letters, digits, '-', '_' and '.' (it is part of the hosts' exchange names)")
            .Validate(o => o.Partitions is >= 1 and <= 64, "Audit:Partitions must be 1 to 64")
            .Validate(o => o.TrustedKeys.All(k => IsPublicKey(Base64(k))), "Audit:TrustedKeys must hold auditors' public keys in base64 (the public half of Audit:KeyFile)")
            .Validate(o => !string.IsNullOrWhiteSpace(o.KeyFile) && !string.IsNullOrWhiteSpace(o.HeadsFolder), "Audit:KeyFile and Audit:HeadsFolder must name a file and a folder")
            .ValidateOnStart();
        builder.Services.AddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<AuditOptions>>().Value;
            return new AuditRoute(o.Queue, o.Partitions, sp.GetService<Activities.HostContext>()?.Host); // a host sends through exits of its own
        });
        builder.Services.AddOptions<FleetOptions>().BindConfiguration(FleetOptions.Section)
            .Validate(o => o.ReportSeconds is >= 1 and <= 3600, "Fleet:ReportSeconds must be 1 to 3600")
            .ValidateOnStart();
        builder.Services.AddOptions<TrustOptions>().BindConfiguration(TrustOptions.Section)
            .Validate(o => string.IsNullOrWhiteSpace(o.OperatorKey) || IsPublicKey(o.PublicKey),
                "Trust:OperatorKey must be the operator's public key in base64 (`semigrate operator init` prints it)")
            .Validate(o => o.ValidHours is > 0 and <= 24 * 366, "Trust:ValidHours must be more than 0 and at most a year")
            .ValidateOnStart();
        builder.Services.AddOptions<TemporalOptions>().BindConfiguration(TemporalOptions.Section)
            .Validate(o => !o.IsConfigured || HostPort().IsMatch(o.Address!),
                "Temporal:Address must be host:port (or empty to use the embedded engine)")
            .Validate(o => !string.IsNullOrWhiteSpace(o.Namespace), "Temporal:Namespace must not be empty")
            .Validate(o => string.IsNullOrEmpty(o.ClientCertFile) == string.IsNullOrEmpty(o.ClientKeyFile),
                "Temporal:ClientCertFile and Temporal:ClientKeyFile go together (mTLS), or neither")
            .Validate(o => new[] { o.ServerCaFile, o.ClientCertFile, o.ClientKeyFile }.All(f => string.IsNullOrEmpty(f) || File.Exists(f)),
                "Temporal:ServerCaFile, ClientCertFile and ClientKeyFile must name files that exist")
            .ValidateOnStart();
        return builder;
    }

    private static bool IsPostgresConnectionString(string value)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            return false;
        }
        try
        {
            return !string.IsNullOrEmpty(new NpgsqlConnectionStringBuilder(value).Host);
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    private static byte[]? Base64(string value)
    {
        var bytes = new byte[value.Length];
        return Convert.TryFromBase64String(value.Trim(), bytes, out var n) ? bytes[..n] : null;
    }

    private static bool IsPublicKey(byte[]? key)
    {
        if (key is null)
        {
            return false;
        }
        using var ecdsa = System.Security.Cryptography.ECDsa.Create();
        try
        {
            ecdsa.ImportSubjectPublicKeyInfo(key, out _);
            return true;
        }
        catch (System.Security.Cryptography.CryptographicException)
        {
            return false;
        }
    }

    [GeneratedRegex("^[a-z_][a-z0-9_]{0,62}$")]
    private static partial Regex SqlIdentifier();

    [GeneratedRegex(@"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")]
    private static partial Regex HostPort();
}
