using JasperFx;
using Marten;
using Microsoft.Extensions.Options;
using Npgsql;
using SEmigrate.Workers.Settings;
using SEmigrate.Workers.Temporal;
using Temporalio.Client;

namespace SEmigrate.Workers.Doctor;

/// <summary>Checks that this host can reach what its roles need; each check turns every failure
/// into a line of text, so one broken service never hides the others.</summary>
public sealed class DoctorChecks(
    IOptions<PostgresOptions> postgres, IOptions<RabbitMqOptions> rabbitMq, IOptions<TemporalOptions> temporal, IOptions<TrustOptions> trust)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(15);

    public async Task<IReadOnlyList<CheckResult>> RunAsync(CancellationToken ct) =>
    [
        await Guarded("postgres", () => true, PostgresAsync, ct),
        await Guarded("rabbitmq", () => true, RabbitMqAsync, ct),
        await Guarded("temporal", () => temporal.Value.IsConfigured, TemporalAsync, ct),
        await Guarded("qemu", () => false, _ => Task.FromResult(Qemu()), ct),
        await Guarded("trust", () => !string.IsNullOrWhiteSpace(trust.Value.OperatorKey), _ => Task.FromResult(Trust()), ct),
    ];

    // isRequired is read inside the guard: reading options validates them, and a check whose
    // settings are invalid counts as required.
    private static async Task<CheckResult> Guarded(
        string name, Func<bool> isRequired, Func<CancellationToken, Task<string>> check, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(Timeout);
        var required = true;
        try
        {
            required = isRequired();
            return new CheckResult(name, true, required, await check(cts.Token));
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new CheckResult(name, false, required, $"no answer within {Timeout.TotalSeconds:0} s");
        }
#pragma warning disable CA1031 // any failure of a check is its result, not a crash
        catch (Exception e)
#pragma warning restore CA1031
        {
            return new CheckResult(name, false, required, Describe(e));
        }
    }

    private async Task<string> PostgresAsync(CancellationToken ct)
    {
        var o = postgres.Value;
        var csb = new NpgsqlConnectionStringBuilder(o.ConnectionString) { Timeout = 5 };
        await using (var connection = new NpgsqlConnection(csb.ConnectionString))
        {
            try
            {
                await connection.OpenAsync(ct);
            }
            catch (Exception e) when (e is NpgsqlException { SqlState: "28P01" or "28000" } || e.Message.Contains("password", StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidOperationException(
                    $"Postgres:ConnectionString has {(string.IsNullOrEmpty(csb.Password) ? "no password" : "a password the server refuses")} for {csb.Username}"
                    + " (deploy/services.sh up prints the settings with the password it made)", e);
            }
        }
        await using var store = DocumentStore.For(m =>
        {
            m.Connection(csb.ConnectionString);
            m.DatabaseSchemaName = o.Schema;
            m.AutoCreateSchemaObjects = AutoCreate.CreateOrUpdate;
        });
        await store.Storage.ApplyAllConfiguredChangesToDatabaseAsync();
        return $"{csb.Host}:{csb.Port}, Marten store ready (schema {o.Schema})";
    }

    private async Task<string> RabbitMqAsync(CancellationToken ct)
    {
        var factory = rabbitMq.Value.ConnectionFactory("semigrate doctor");
        factory.RequestedConnectionTimeout = TimeSpan.FromSeconds(5);
        factory.AutomaticRecoveryEnabled = false;
        RabbitMQ.Client.IConnection connection;
        try
        {
            connection = await factory.CreateConnectionAsync(ct);
        }
        catch (RabbitMQ.Client.Exceptions.BrokerUnreachableException e) when (e.InnerException is RabbitMQ.Client.Exceptions.AuthenticationFailureException
                                                                             || e.Message.Contains("ACCESS_REFUSED", StringComparison.Ordinal))
        {
            throw new InvalidOperationException(
                $"RabbitMq:Uri logs in as {factory.UserName}, whom the broker refuses (deploy/services.sh up prints the settings with its user and password)", e);
        }
        await using var _ = connection;
        await using var channel = await connection.CreateChannelAsync(cancellationToken: ct);
        var version = connection.ServerProperties?.TryGetValue("version", out var v) == true && v is byte[] b
            ? System.Text.Encoding.UTF8.GetString(b)
            : "unknown version";
        var account = factory.UserName.StartsWith(Processes.HostBrokerUsers.UserPrefix, StringComparison.Ordinal)
            ? $"as {factory.UserName}, host {factory.UserName[Processes.HostBrokerUsers.UserPrefix.Length..]}'s own user"
            : $"as {factory.UserName}, not a host's own user: fine for the orchestrator and the operator's commands; a host's worker should log in as its own (deploy/services.sh host-user NAME)";
        return $"{factory.HostName}:{factory.Endpoint.Port}{(factory.Ssl.Enabled ? " (TLS)" : "")}, RabbitMQ {version}, {account}";
    }

    private async Task<string> TemporalAsync(CancellationToken ct)
    {
        var o = temporal.Value;
        if (!o.IsConfigured)
        {
            return "not configured: the embedded engine will run migrations";
        }
        var client = await TemporalClient.ConnectAsync(o.ConnectOptions())
            .WaitAsync(ct);
        var info = await client.Connection.WorkflowService.GetSystemInfoAsync(
            new Temporalio.Api.WorkflowService.V1.GetSystemInfoRequest(), new() { CancellationToken = ct });
        // Without its search attributes every workflow task of a migration fails: say so here.
        var missing = (await SearchAttributeSetup.CheckAsync(client, ct)).Where(a => a.Has != Temporalio.Api.Enums.V1.IndexedValueType.Keyword)
            .Select(a => a.Has is null ? a.Name : $"{a.Name} (registered as {a.Has})").ToList();
        if (missing.Count > 0)
        {
            throw new InvalidOperationException($"namespace {o.Namespace} lacks the search attributes {string.Join(", ", missing)}: run `semigrate temporal setup`");
        }
        return $"{o.Address}, namespace {o.Namespace}, server {info.ServerVersion}, search attributes registered";
    }

    /// <summary>Which operator the host workers here obey, and whether the operator's commands can sign here.</summary>
    private string Trust()
    {
        var o = trust.Value;
        var signs = File.Exists(o.OperatorKeyFile) ? $"; the operator's key to sign with is {o.OperatorKeyFile}"
            : $"; no operator key at {o.OperatorKeyFile} (Trust:OperatorKeyFile), so migrate and maintenance cannot sign here";
        return o.PublicKey is { } pinned ? $"host workers here pin operator key {Sealing.HostKeyPair.Fingerprint(pinned)}{signs}"
            : throw new InvalidOperationException($"Trust:OperatorKey is not set: a host worker here refuses every step (`semigrate operator init` prints it){signs}");
    }

    private static string Qemu()
    {
        var path = FindOnPath("qemu-system-x86_64")
            ?? throw new InvalidOperationException("qemu-system-x86_64 not found (`semigrate guest boot` installs it)");
        return path;
    }

    internal static string? FindOnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, program))
            .FirstOrDefault(File.Exists);

    /// <summary>The chain of messages, outermost first, without repeats: "Failed to connect: Connection refused".</summary>
    internal static string Describe(Exception e)
    {
        var messages = new List<string>();
        for (var x = e; x is not null; x = x.InnerException)
        {
            var m = x.Message.Trim().TrimEnd('.');
            if (m.Length > 0 && !messages.Any(seen => seen.Contains(m, StringComparison.Ordinal)))
            {
                messages.Add(m);
            }
        }
        return string.Join(": ", messages);
    }
}
